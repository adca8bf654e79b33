"""Commands of the job kinds: `enqueue backfill-range`, `demo seed`."""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from sqlalchemy import Connection, text

from tidegate.jobs import approved_sql, filters, inspect, rollout, sql_check
from tidegate.worker import knobs, runs
from tidegate.worker import targets as targets_mod
from tidegate.worker.cliutil import (
    Database,
    TidegateExit,
    actor_option,
    database_option,
    echo_json,
    refuse_one_database,
)
from tidegate.worker.enqueue import enqueue
from tidegate.worker.errors import InvalidInput, quote
from tidegate.worker.keys import encode, parse
from tidegate.worker.sql import load

DEMO_SQL = load("tidegate.jobs.demo", "demo.sql")  # demo seed and demo check: the demo's tables


def queue_options(func: Any) -> Any:
    """Options every enqueue command shares."""
    for option in reversed(
        [
            click.option("--owner", required=True, help="Who owns this job (team or person)."),
            knobs.options(knobs.QUEUE_KNOBS),  # --priority, --max-attempts
            click.option("--run-after", type=click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S",
                                                              "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"]),
                         help="Do not start before this time (UTC unless an offset is given)."),
            click.option("--queue", default="default", show_default=True, help="Queue (pool) to run on."),
            click.option("--json", "as_json", is_flag=True, help="Print the job as JSON."),
            actor_option,
            database_option,
            click.option("--targets", "fanout_targets", metavar="SPEC",
                         help="Fan out: one job per target (comma-separated names or shell patterns like 'shard_*'),"
                              " all under one run id (printed on stdout). Validated in every target first; a target"
                              " that refuses gets no job, the others get theirs, and the exit code is the worst of the"
                              " refusals' (2 invalid, 5 down or not migrated). See ops/targets.md."),
            click.option("--all-or-nothing", is_flag=True,
                         help="With --targets: no job anywhere unless every target accepts it."),
            _fanout,
        ]
    ):
        func = option(func)
    return func


@dataclass
class FanOut:
    """--targets: the targets an enqueue command fans out to."""

    targets: list[Any]
    all_or_nothing: bool


def _fanout(func: Any) -> Any:
    """--targets SPEC: the command runs once, on the first target that answers (an archive job's selection and
    layout are read there), and :func:`submit` fans the job out to every target. Passed on as ``fanout``."""

    @functools.wraps(func)
    def wrapper(*args: Any, db: Database, fanout_targets: str | None, all_or_nothing: bool, **kwargs: Any) -> Any:
        if fanout_targets is None:
            if all_or_nothing:
                raise InvalidInput("--all-or-nothing needs --targets")
            return func(*args, db=db, fanout=None, **kwargs)
        refuse_one_database("--targets")
        chosen = runs.select_targets(fanout_targets)
        if kwargs.get("dry_run"):
            raise InvalidInput("--dry-run rehearses in one database: give --target NAME instead of --targets")
        if "apply" in kwargs and not kwargs["apply"]:
            raise InvalidInput("--targets enqueues for real, after validating in every target: add --apply (a dry"
                               " run previews one database: give --target NAME)")
        if kwargs.get("from_audit"):
            raise InvalidInput("--from-audit names a job of one database: give --target NAME instead of --targets")
        first = next((t for t in chosen if targets_mod.probe(t).migrated), chosen[0])
        one = Database.of_target(first.name)
        try:
            return func(*args, db=one, fanout=FanOut(chosen, all_or_nothing), **kwargs)
        finally:
            one.dispose()

    return wrapper


def submit(db: Database, job_type: str, payload: dict[str, Any], opts: dict[str, Any],
           prepare: Callable[[Connection], Any] | None = None) -> None:
    """Enqueue the job (the one path every enqueue command takes), or with --targets one per target.
    ``prepare(conn)``: what each target needs before the job is validated and inserted there (an archive
    job's layout registration; on one database the command has done it already)."""
    run_after: datetime | None = opts["run_after"]
    if opts.get("fanout") is not None:
        _submit_run(opts["fanout"], job_type, payload, opts, prepare)
        return
    job_id, plan = enqueue(
        db.engine, job_type, payload, actor=opts["actor"], queue=opts["queue"],
        run_after=parse("timestamptz", run_after) if run_after else None, **knobs.take(opts, knobs.QUEUE_KNOBS),
    )
    if opts["as_json"]:
        echo_json({"job_id": job_id, "type": job_type, "payload": payload, "slices": len(plan.slices),
                   "rows_estimate": plan.total_estimate})
    else:
        click.echo(job_id)
        click.echo(
            f"{job_type}: [{encode(plan.from_key)}, {encode(plan.to_key)}) ~{plan.total_estimate} rows,"
            f" {len(plan.slices)} slice(s), batch size {plan.batch_size}", err=True,
        )


def _submit_run(fan: FanOut, job_type: str, payload: dict[str, Any], opts: dict[str, Any],
                prepare: Callable[[Connection], Any] | None) -> None:
    """One job per target under one run id: the run id on stdout, a line per target on stderr (--json: both
    as one document); exit code the worst of the refused targets' (worker/runs.py)."""
    run_after: datetime | None = opts["run_after"]
    run_id, outcomes = runs.enqueue_run(
        fan.targets, job_type, payload, actor=opts["actor"], queue=opts["queue"],
        run_after=parse("timestamptz", run_after) if run_after else None, all_or_nothing=fan.all_or_nothing,
        prepare=prepare, **knobs.take(opts, knobs.QUEUE_KNOBS))
    created = [o for o in outcomes if o.job_id and "skipped" not in o.detail]
    refused = [o for o in outcomes if o.error]
    if opts["as_json"]:
        echo_json({"run_id": run_id if created else None, "type": job_type, "payload": payload,
                   "all_or_nothing": fan.all_or_nothing, "jobs": len(created),
                   "targets": [o.as_json() for o in outcomes]})
    elif created:
        click.echo(run_id)
    if not opts["as_json"]:
        for o in outcomes:
            if o.error:
                click.echo(f"target {o.target}: refused: {o.error}", err=True)
            elif "skipped" in o.detail:
                click.echo(f"target {o.target}: {o.detail['skipped']}", err=True)
            else:
                click.echo(f"target {o.target}: {job_type} job {o.job_id} ~{o.detail.get('rows_estimate')} rows,"
                           f" {o.detail.get('slices')} slice(s)", err=True)
        click.echo(f"run {run_id}: {len(created)} job(s) queued on {len(outcomes)} target(s)"
                   + (f", {len(refused)} refused" if refused else ""), err=True)
    if refused:
        tail = ("no job was queued anywhere (--all-or-nothing)" if fan.all_or_nothing or not created
                else f"the other targets' jobs are queued under run {run_id}")
        raise TidegateExit(f"{len(refused)} of {len(outcomes)} target(s) refused"
                           f" ({', '.join(o.target for o in refused)}): {tail}", runs.worst(outcomes))


@click.command("backfill-range")
@click.option("--source", help="Source table (schema.table). Default: the handler's.")
@click.option("--key", help="Indexed integer, date or timestamp column to page by. Default: the handler's.")
@click.option("--from", "from_", required=True, help="Start of the range (inclusive).")
@click.option("--to", required=True, help="End of the range (exclusive).")
@click.option("--handler", help="Registered handler name, module:function, sql:PATH (one INSERT/UPDATE/DELETE/MERGE"
                                " using :lo and :hi; needs the tg_sql_author role and a pool with --allow-sql) or"
                                " sql-approved:NAME (a statement an operator approved with `tidegate sql approve`)."
                                " Default: $TIDEGATE_DEFAULT_HANDLER or hero_troops.")
@knobs.options(knobs.for_kind("backfill_range"), batch_size=500)
@click.option("--writes", multiple=True, help="A table the job writes (the autovacuum gate watches it).")
@click.option("--where", "where", multiple=True,
              help="Only rows matching FIELD OP VALUE (=, !=, <, <=, >, >=, in a,b,c, is null, is not null);"
                   " repeat to AND several. Python handlers only.")
@click.option("--dry-run", is_flag=True,
              help="Enqueue nothing: rehearse. Run the real handler on --sample rows spread over the range in a"
                   " transaction that is always rolled back; print rows read and written, the items that would"
                   " fail, the time per row and the ETA of the range.")
@click.option("--sample", default=inspect.DEFAULT_SAMPLE, show_default=True, type=click.IntRange(0, 10_000),
              help="With --dry-run: rows the handler is run on (keys at even quantiles of the range's rows);"
                   " 0 only plans, read-only.")
@click.option("--deadline", default=inspect.DEFAULT_DEADLINE, show_default=True,
              type=click.FloatRange(0.1, 86_400), help="With --dry-run: seconds the rehearsal may take before it"
                                                       " is stopped (statement cancelled, nothing written).")
@queue_options
def enqueue_backfill(db: Database, source: str | None, key: str | None, from_: str, to: str,
                     handler: str | None, writes: tuple[str, ...], where: tuple[str, ...], dry_run: bool,
                     sample: int, deadline: float, **opts: Any) -> None:
    """Enqueue a backfill-range job over [FROM, TO) and print its id (or, with --dry-run, what it would do)."""
    payload: dict[str, Any] = {"from": from_, "to": to, **knobs.take(opts, knobs.for_kind("backfill_range")),
                               "owner": opts.pop("owner")}
    if writes:
        payload["writes"] = list(writes)
    if where:
        payload["where"] = [filters.parse(w) for w in where]
    if source:
        payload["source"] = source
    if key:
        payload["key"] = key
    if handler and handler.startswith("sql:"):
        payload["sql"] = sql_check.read_file(Path(handler[4:]))
    elif handler and handler.startswith("sql-approved:"):
        payload["sql_approved"] = handler[len("sql-approved:"):]
    elif handler:
        payload["handler"] = handler
    if dry_run:
        with db.engine.connect() as conn:
            if sample:
                report = inspect.rehearse(conn, payload, sample, deadline, on_hang=_give_up)
            else:
                report = inspect.dry_run(conn, payload)
        if opts["as_json"]:
            echo_json(report)
        else:
            for name, value in report.items():
                if isinstance(value, dict):
                    for sub, item in value.items():
                        click.echo(f"{name}.{sub}: {item}")
                else:
                    click.echo(f"{name}: {value}")
        return
    submit(db, "backfill_range", payload, opts)


def _give_up(message: str) -> None:
    """A rehearsal whose handler hangs in Python: say so and end the process (its connection closes, so the
    server rolls the rehearsal back)."""
    click.echo(f"error: {message}", err=True)
    sys.stderr.flush()
    os._exit(inspect.RehearsalStopped.exit_code)


enqueue_backfill.tidegate_enqueue = True  # type: ignore[attr-defined]


# -- demo -------------------------------------------------------------------------


@click.group()
def demo() -> None:
    """The backfill runbook's demo: hero_snapshots (raw JSONB) -> user_troops."""


@demo.command("seed")
@click.option("--rows", default=200_000, show_default=True, type=click.IntRange(1, 100_000_000))
@click.option("--users", type=click.IntRange(1, 100_000_000), help="Distinct users (default: 80% of rows).")
@click.option("--start", default="2024-01-01T00:00:00Z", show_default=True, help="First snapshot time.")
@click.option("--spacing", default=30.0, show_default=True, help="Seconds between snapshots.")
@database_option(schema=False)
def demo_seed(db: Database, rows: int, users: int | None, start: str, spacing: float) -> None:
    """Create the demo tables and fill hero_snapshots with ROWS snapshots (about 1 in 997 malformed).

    Idempotent: an existing table with the same number of rows is kept; otherwise
    it is refilled. user_troops (the derived table) is emptied either way.
    """
    from alembic import command
    from alembic.config import Config

    cfg = Config(str(Path(__file__).resolve().parent.parent / "alembic.ini"), ini_section="demo")
    cfg.attributes["url"] = db.url
    command.upgrade(cfg, "head")
    users = users or max(1, rows * 4 // 5)
    with db.engine.begin() as conn:
        have = conn.execute(text(DEMO_SQL["count_snapshots"])).scalar_one()
        conn.execute(text(DEMO_SQL["empty_troops"]))
        if have == rows:
            click.echo(f"hero_snapshots already holds {rows} rows; user_troops emptied")
            return
        conn.execute(text(DEMO_SQL["empty_snapshots"]))
    started = time.monotonic()
    chunk = 50_000
    for offset in range(0, rows, chunk):
        with db.engine.begin() as conn:
            conn.execute(text(DEMO_SQL["seed"]), {"rows": min(chunk, rows - offset), "offset": offset,
                                                  "users": users, "start": parse("timestamptz", start),
                                                  "spacing": spacing})
        done = min(rows, offset + chunk)
        click.echo(f"\rseeded {done}/{rows} snapshots ({time.monotonic() - started:.1f}s)", nl=False, err=True)
    click.echo("", err=True)
    with db.engine.begin() as conn:
        conn.execute(text(DEMO_SQL["analyze_snapshots"]))
    click.echo(f"hero_snapshots: {rows} rows for {users} users from {start}")


@demo.command("check")
@database_option(schema=False)
def demo_check(db: Database) -> None:
    """Print user_troops' row count and checksum (compare two runs)."""
    with db.engine.connect() as conn:
        row = conn.execute(text(DEMO_SQL["troops_checksum"])).one()
    echo_json({"user_troops_rows": row.rows, "checksum": row.checksum})


@click.command("verify")
@click.argument("job")
@click.option("--sample", default=50, show_default=True, type=click.IntRange(1, 100_000),
              help="Source rows recomputed and compared with the derived rows.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@database_option
def verify_cmd(db: Database, job: str, sample: int, as_json: bool) -> None:
    """Parity checks of a backfill: source rows vs processed_count, unique derived keys, a recomputed
    sample; of an archive job: audit vs processed_count, no event left behind, cross-references.
    Exits 1 on any mismatch."""
    from tidegate.worker.control import find_job

    with db.engine.connect() as conn:
        inspect.read_only(conn)
        report = inspect.verify(conn, find_job(conn, job), sample)
        conn.rollback()
    if as_json:
        echo_json({"job_id": report.job_id, "ok": report.ok, "checks": report.checks})
    else:
        for c in report.checks:
            mark = "skip" if not c.get("checked", True) else "ok  " if c["ok"] else "FAIL"
            click.echo(f"{mark} {c['check']}: {c['detail']}")
    if not report.ok:
        raise SystemExit(1)


@click.command("rollout")
@click.argument("job", required=False)
@click.option("--run", "run_id", metavar="RUN_ID",
              help="Roll out a fan-out run instead of one JOB: one target's job as the canary, then the others.")
@click.option("--targets", "targets_spec", default="*", show_default=True, metavar="A,B,shard_*",
              help="With --run: the targets to look for the run's jobs in (names or patterns).")
@click.option("--canary-target", metavar="NAME", help="With --run: the target whose job is the canary (default: the"
                                                       " first target holding a job of the run).")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(1, 10_000),
              help="With --run: targets released at a time once the canary is verified.")
@click.option("--steps", default="1,2,4", show_default=True,
              help="Concurrency after the canary, raised step by step (comma-separated).")
@click.option("--step-rows", default=10_000, show_default=True, type=click.IntRange(1),
              help="Rows processed at each step before verifying and raising concurrency.")
@click.option("--sample", default=50, show_default=True, type=click.IntRange(1, 100_000),
              help="Source rows recomputed at each verification.")
@click.option("--poll", default=2.0, show_default=True, type=click.FloatRange(0.05, 600))
@click.option("--timeout", default=24 * 3600.0, show_default=True, type=click.FloatRange(1),
              help="Seconds to wait for any one step before giving up (the job keeps its state).")
@actor_option
@database_option
def rollout_cmd(db: Database, job: str | None, run_id: str | None, targets_spec: str, canary_target: str | None,
                batch: int, steps: str, step_rows: int, sample: int, poll: float, timeout: float, actor: str) -> None:
    """Gradual rollout of a job enqueued with --limit N: canary, verify, resume at low concurrency, raise it
    step by step, verifying between steps. Exits 1, the job paused, at a step whose verification fails.

    With --run RUN_ID (a fan-out run, enqueued with --limit N): the jobs in the other targets are paused
    first; the canary target's job is rolled out as above; then the others are released --batch targets
    at a time (limit lifted, at the last step's concurrency), each verified when done. A failed
    verification pauses the run's remaining jobs and exits 1 (ops/targets.md)."""
    from tidegate.worker.control import find_job

    try:
        levels = [int(s) for s in steps.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"--steps must be integers, got {quote(steps)}") from None
    concurrency = knobs.KNOBS["concurrency"]
    if not levels or not all(concurrency.lo <= n <= concurrency.hi for n in levels):
        raise click.BadParameter(f"--steps must be concurrencies {concurrency.describe()}")
    if (job is None) == (run_id is None):
        raise click.UsageError("give a JOB or --run RUN_ID (one of them)")
    try:
        if run_id is not None:
            from tidegate.worker.runs import check_run_id, select_targets
            from tidegate.worker.targets import check_name

            run_id = check_run_id(run_id)
            if canary_target is not None:
                check_name(canary_target, "--canary-target")
            rollout.RunRollout(select_targets(targets_spec), run_id, levels, step_rows, actor, click.echo,
                               canary_target, batch, sample, poll, timeout).run()
            return
        if canary_target is not None or batch != 1:
            raise click.UsageError("--canary-target and --batch go with --run")
        with db.engine.connect() as conn:
            job_id = find_job(conn, job)
        rollout.Rollout(db.engine, job_id, levels, step_rows, actor, click.echo, sample, poll, timeout).run()
    except rollout.Holding as err:
        click.echo(str(err), err=True)
        raise SystemExit(1) from None


COMMANDS = [enqueue_backfill, demo, verify_cmd, rollout_cmd, approved_sql.sql_group]
