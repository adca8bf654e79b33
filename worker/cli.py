"""The `tidegate` command: a thin click layer over the runtime and the job kinds' commands."""

from __future__ import annotations

import logging
import os
import sys
import time

import click

from tidegate.worker import entry, gates, kinds, knobs, trust
from tidegate.worker.cliutil import Database, TidegateExit, actor_option, database_option, echo_json, run_cli
from tidegate.worker.db import is_outage, mask_url, tidegate_home
from tidegate.worker.errors import SchemaNotReady, TidegateError
from tidegate.worker.logs import setup_logging
from tidegate.worker.maintenance import DAY, RetentionConfig


class _PluginGroup(click.Group):
    """A group whose job kinds' commands (``COMMANDS`` of the ``tidegate.plugins`` entry points) are added when
    first needed: a name that is not built in is asked for, or the commands are listed (``--help``). The
    commands' modules are then imported; `tidegate worker` and the other built-in commands never import them
    (bench/RESULTS.md, pool start). A built-in command keeps its name."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = super().get_command(ctx, cmd_name)
        if found is None and _add_plugin_commands():
            found = super().get_command(ctx, cmd_name)
        return found

    def list_commands(self, ctx: click.Context) -> list[str]:
        _add_plugin_commands()
        return super().list_commands(ctx)


_plugins_added = False


def _add_plugin_commands() -> bool:
    """Add the job kinds' commands to `tidegate` and `tidegate enqueue` (once); False if they were added before."""
    global _plugins_added
    if _plugins_added:
        return False
    _plugins_added = True
    for command in kinds.plugin_commands():
        group = enqueue if getattr(command, "tidegate_enqueue", False) else cli
        if command.name not in group.commands:
            group.add_command(command)
    return True


@click.group(cls=_PluginGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--log-format", default="text", show_default=True, type=click.Choice(["text", "json"]),
              help="text for humans, json for log pipelines.")
@click.pass_context
def cli(ctx: click.Context, log_level: str, log_format: str) -> None:
    """tidegate: resumable, throttled, pausable backfill and archive jobs on PostgreSQL.

    Enqueue work (CLI or plain SQL into queue_jobs), run a worker pool, watch
    it with `status`, and pause or resume it (CLI or plain SQL on backfill_jobs).
    """
    setup_logging(log_level, log_format)
    ctx.obj = {"log_level": log_level, "log_format": log_format}
    if ctx.invoked_subcommand != "worker":  # the worker does it itself, once the pool's code is imported
        entry.started()


# -- database -------------------------------------------------------------


@cli.group()
def db() -> None:
    """Schema migrations (Alembic underneath) and the embedded server."""


def alembic_config(db: Database, section: str = "alembic"):  # type: ignore[no-untyped-def]
    from tidegate.worker.schema import alembic_config

    return alembic_config(db.url, section)


@db.command("upgrade")
@click.argument("revision", default="head")
@click.option("--all-targets", is_flag=True, help="Migrate every target (`tidegate targets list`), one by one.")
@database_option(schema=False)
def db_upgrade(db: Database, revision: str, all_targets: bool) -> None:
    """Apply migrations up to REVISION (default: head), in the database or --target, or --all-targets."""
    from alembic import command

    if all_targets and db.target:
        raise click.UsageError("give --target NAME or --all-targets, not both")
    if not all_targets:
        command.upgrade(alembic_config(db), revision)
        click.echo(f"{_named(db)} at {_current(db) or 'base'}")
        return
    from tidegate.worker import targets
    from tidegate.worker.db import first_line

    failed: list[tuple[str, TidegateError | Exception]] = []
    for target in targets.select(None):
        one = Database.of_target(target.name, schema=False)
        try:
            command.upgrade(alembic_config(one), revision)
            click.echo(f"{_named(one)} at {_current(one) or 'base'}")
        except Exception as err:  # one target's failure is reported; the others are still migrated
            failed.append((target.name, err))
            click.echo(f"target {target.name}: not migrated: {mask_url(first_line(err))[:300]}", err=True)
        finally:
            one.dispose()
    if failed:
        codes = {getattr(e, "exit_code", 5 if is_outage(e) else 1) for _, e in failed}
        raise TidegateExit(f"{len(failed)} target(s) not migrated: {', '.join(n for n, _ in failed)}",
                           max(codes))


def _named(db: Database) -> str:
    return f"target {db.target} ({db.masked})" if db.target else f"database {db.masked}"


@db.command("downgrade")
@click.argument("revision")
@database_option(schema=False)
def db_downgrade(db: Database, revision: str) -> None:
    """Revert migrations down to REVISION ("base" removes tidegate's tables)."""
    from alembic import command

    command.downgrade(alembic_config(db), revision)
    click.echo(f"{_named(db)} at {_current(db) or 'base'}")


@db.command("current")
@database_option(schema=False)
def db_current(db: Database) -> None:
    """Print the applied revision."""
    click.echo(_current(db) or "base (no tidegate tables)")


def _current(db: Database) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with db.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": "tidegate_alembic_version"})
        heads = ctx.get_current_heads()
    return ",".join(heads) if heads else None


@db.command("embedded")
@click.option("--stop", is_flag=True, help="Stop the embedded server.")
def db_embedded(stop: bool) -> None:
    """Show (or stop) the embedded PostgreSQL used when no DATABASE_URL is given."""
    from tidegate.worker import embedded

    pgdata = tidegate_home() / "pgdata"
    if stop:
        click.echo("stopped" if embedded.stop(pgdata) else "not running")
    else:
        click.echo(embedded.embedded_url(pgdata))


# -- targets ---------------------------------------------------------------


@cli.group("targets")
def targets_group() -> None:
    """Named databases (a database per tenant or shard): each keeps its own tidegate tables.

    Stored in $TIDEGATE_TARGETS_FILE (default $TIDEGATE_HOME/targets.toml, mode 0600), and/or given as
    $TIDEGATE_TARGETS='a=postgresql://...,b=postgresql://...'. Every job command takes --target NAME."""


@targets_group.command("add")
@click.argument("name")
@click.argument("url")
@click.option("--replace", is_flag=True, help="Change the URL of a target that exists.")
def targets_add(name: str, url: str, replace: bool) -> None:
    """Add target NAME ([a-z0-9_-], 1 to 63 characters) for the database at URL (not connected to)."""
    from tidegate.worker import targets

    found = targets.add(name, url, replace=replace)
    click.echo(f"target {found.name} = {found.masked} (in {found.source})")


@targets_group.command("remove")
@click.argument("name")
def targets_remove(name: str) -> None:
    """Remove target NAME from the targets file (its database and tables are left as they are)."""
    from tidegate.worker import targets

    found = targets.remove(name)
    click.echo(f"target {found.name} removed from {found.source}")


@targets_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--timeout", default=5, show_default=True, type=click.IntRange(1, 60),
              help="Seconds to wait for each target's database.")
def targets_list(as_json: bool, timeout: int) -> None:
    """Every target: its URL (password masked), where it is defined, reachable?, migrated?, schema revision."""
    from tidegate.worker import targets

    rows = []
    for t in targets.load().values():
        p = targets.probe(t, timeout)
        rows.append({"name": t.name, "url": t.masked, "source": t.source, "reachable": p.reachable,
                     "migrated": p.migrated, "revision": p.revision, "error": p.error})
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo(f"no targets (tidegate targets add NAME URL, or ${targets.ENV})")
        return
    for r in rows:
        state = ("migrated" if r["migrated"] else "NOT MIGRATED") if r["reachable"] else "UNREACHABLE"
        extra = f"  ({r['error']})" if r["error"] else ""
        click.echo(f"{r['name']:<20} {state:<13} {r['revision'] or 'base':<8} {r['url']}  [{r['source']}]{extra}")


# -- worker pool ------------------------------------------------------------


@cli.command()
@click.option("--concurrency", "-c", default=2, show_default=True, type=click.IntRange(1, 256),
              help="Worker processes in this pool.")
@click.option("--types", default="", help="Comma-separated job types this pool runs (default: all).")
@click.option("--queue", "queues", multiple=True, default=["default"], show_default=True,
              help="Queue(s) this pool serves; repeat for several.")
@click.option("--drain", is_flag=True, help="Exit 0 once no claimable work is left (for scripts).")
@click.option("--lease", "lease_seconds", default=10.0, show_default=True, type=click.FloatRange(0.5, 3600),
              help="Seconds a worker owns its slices without a heartbeat; a SIGKILLed worker's work"
                   " is taken over after this.")
@click.option("--poll", "poll_seconds", default=1.0, show_default=True, type=click.FloatRange(0.05, 60),
              help="Seconds between claim attempts when idle.")
@click.option("--pool", "pool_name", default="default", show_default=True, help="Name shown in the workers table.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), envvar="TIDEGATE_METRICS_PORT",
              help="Serve Prometheus metrics of the whole pool on this port (/metrics).")
@click.option("--retention-jobs", default=7.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Days a finished queue job (and its checkpoint rows) is kept.")
@click.option("--retention-errors", default=30.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Days an etl_errors row is kept.")
@click.option("--no-maintenance", is_flag=True, help="Do not prune old rows from this pool.")
@click.option("--progress-every", default=20, show_default=True, type=click.IntRange(1, 100000),
              help="Batches between progress log lines.")
@click.option("--gate-connections", default=0.8, show_default=True, type=click.FloatRange(0.01, 1.0),
              help="Hold batches while connections exceed this share of max_connections.")
@click.option("--gate-long-transactions", default=300.0, show_default=True, type=click.FloatRange(0.1),
              help="Hold batches while another transaction has been open this many seconds.")
@click.option("--gate-replication-lag", default=30.0, show_default=True, type=click.FloatRange(0.1),
              help="Hold batches while a replica is this many seconds behind.")
@click.option("--gate-autovacuum/--no-gate-autovacuum", default=True, show_default=True,
              help="Hold batches while vacuum runs on a table the job writes.")
@click.option("--no-gates", is_flag=True, help="Check no health gate.")
@click.option("--retry-backoff", default=1.0, show_default=True, type=click.FloatRange(0.01, 3600),
              help="Seconds before a failed batch's first retry; doubled on each failure in a row (capped at 300).")
@click.option("--pause-after-failures", default=5, show_default=True, type=click.IntRange(1, 1000),
              help="Pause a job after this many batches in a row failed in the database (full disk, timeouts,"
                   " serialization failures...); other errors fail it after its max_attempts.")
@click.option("--handlers", "handler_modules", multiple=True, metavar="MODULE",
              help="A module whose handlers payloads may name (module:function), besides the"
                   " tidegate.handlers entry points; repeatable. Adds to $TIDEGATE_HANDLERS.")
@click.option("--batch-deadline", type=click.FloatRange(0.5, 86400),
              help="Seconds a batch may run before its statement is cancelled (a failed attempt); a batch that"
                   " then does not return wedges its worker, which exits. Default: 10x the job's"
                   " target_batch_seconds (at least 60), else 600.")
@click.option("--stop-grace", default=30.0, show_default=True, type=click.FloatRange(0, 3600),
              help="After SIGTERM, seconds a batch in flight may run on before it is cancelled (not counted).")
@click.option("--max-worker-deaths", default=3, show_default=True, type=click.IntRange(1, 1000),
              help="Worker deaths in a row during a job's batches before the job fails as poison.")
@click.option("--allow-sql/--no-allow-sql", default=False, envvar=trust.ALLOW_SQL_ENV, show_default=True,
              help="Run jobs' own SQL statements (payload sql), for enqueuers in the sql-author role only."
                   " Approved statements (tidegate sql approve) run either way.")
@click.option("--sql-author-role", default=trust.DEFAULT_AUTHOR_ROLE, envvar=trust.AUTHOR_ROLE_ENV, show_default=True,
              help="Role whose members may have their own SQL run (superusers may too).")
@click.option("--targets", "target_names", metavar="A,B,...",
              help="Serve these targets (`tidegate targets list`), fairly, from every worker process.")
@click.option("--all-targets", is_flag=True, help="Serve every target.")
@click.option("--max-open-targets", default=8, show_default=True, type=click.IntRange(1, 10000),
              help="With --targets: databases a worker process keeps connections to at once (each up to 4).")
@click.option("--slice-quantum", default=5.0, show_default=True, type=click.FloatRange(0.1, 86400),
              help="With --targets: seconds a worker works one slice before it lets go and serves the next target.")
@database_option
@click.pass_context
def worker(ctx: click.Context, db: Database, concurrency: int, types: str, queues: tuple[str, ...], drain: bool,
           lease_seconds: float, poll_seconds: float, pool_name: str, metrics_port: int | None,
           retention_jobs: float, retention_errors: float, no_maintenance: bool, progress_every: int,
           gate_connections: float, gate_long_transactions: float, gate_replication_lag: float,
           gate_autovacuum: bool, no_gates: bool, retry_backoff: float, pause_after_failures: int,
           handler_modules: tuple[str, ...], batch_deadline: float | None, stop_grace: float,
           max_worker_deaths: int, allow_sql: bool, sql_author_role: str, target_names: str | None,
           all_targets: bool, max_open_targets: int, slice_quantum: float) -> None:
    """Run an isolated pool of worker processes until SIGTERM (or, with --drain, until idle).

    With --targets (or --all-targets) the pool serves several databases, each with its own tidegate
    tables: every process claims from all of them, least recently served first (ops/targets.md)."""
    from tidegate.worker.pool import run_pool
    from tidegate.worker.runner import WorkerConfig

    _handler_modules(handler_modules)
    # the worker processes (spawned) read the policy from their environment: exactly what was given here
    os.environ[trust.ALLOW_SQL_ENV] = "1" if allow_sql else "0"
    os.environ[trust.AUTHOR_ROLE_ENV] = sql_author_role

    wanted = [t.strip() for t in types.split(",") if t.strip()]
    unknown = sorted(set(wanted) - set(kinds.kinds()))
    if unknown:
        raise click.BadParameter(f"unknown job type(s) {', '.join(unknown)}; known: {', '.join(sorted(kinds.kinds()))}",
                                 param_hint="--types")
    served = _pool_targets(db, target_names, all_targets)
    if served is None:
        with db.engine.connect():  # fail fast at start; outages later are ridden out with backoff
            pass
    # run_pool forks the first workers: no connection of ours may be open then. (db.dispose, not
    # db.engine.dispose: with --targets the --database-url/$DATABASE_URL database is not used at all,
    # so it is neither connected to, schema-checked, nor, for the embedded default, started.)
    db.dispose()
    entry.started()  # the garbage collector runs again, not over what the workers share (worker/entry.py)
    config = WorkerConfig(url=served[0][1] if served else db.url, pool=pool_name, queues=list(queues), types=wanted,
                          lease_seconds=lease_seconds, poll_seconds=poll_seconds, drain=drain,
                          progress_every=progress_every, backoff_base=retry_backoff,
                          backoff_max=max(300.0, retry_backoff), pause_after_failures=pause_after_failures,
                          batch_deadline=batch_deadline, stop_grace=stop_grace,
                          max_worker_deaths=max_worker_deaths,
                          slice_quantum=slice_quantum if served else None, let_go_when_held=bool(served),
                          connect_timeout=CONNECT_TIMEOUT if served else None,
                          gates=[] if no_gates else [
                              gates.Connections(gate_connections), gates.LongTransactions(gate_long_transactions),
                              gates.ReplicationLag(gate_replication_lag),
                              *([gates.Autovacuum()] if gate_autovacuum else [])])
    retention = None if no_maintenance else RetentionConfig(retention_jobs * DAY, retention_errors * DAY)
    where = f"{len(served)} target(s)" if served else db.masked
    logging.getLogger(__name__).info("pool on %s%s", where,
                                     f"; ad-hoc SQL allowed for {sql_author_role}" if allow_sql else "")
    raise SystemExit(run_pool(config, concurrency, ctx.obj["log_level"], ctx.obj["log_format"], metrics_port,
                              retention, served, max_open_targets))


CONNECT_TIMEOUT = 5  # seconds: a pool over several targets never waits longer on one that does not answer


def _pool_targets(db: Database, names: str | None, every: bool) -> list[tuple[str, str]] | None:
    """--targets / --all-targets: (name, url) of each, every one checked at start: an unknown name is exit 2,
    a target that is not migrated exit 5; one that does not answer is only warned about (the pool serves
    the others and tries it again with backoff). None for a pool over one database."""
    if names is None and not every:
        return None
    from tidegate.worker import targets  # here: a pool over one database starts without it (and tomllib)

    if names is not None and every:
        raise click.UsageError("give --targets or --all-targets, not both")
    if db.target is not None:
        raise click.UsageError("give --target (one database) or --targets, not both")
    chosen = targets.select(None if every else targets.split_names(names or ""))
    for t in chosen:
        found = targets.probe(t, CONNECT_TIMEOUT)
        if not found.reachable or found.error:  # a grant missing, say: the worker's log will say more
            logging.getLogger(__name__).warning("target %s %s at start (%s): serving the others meanwhile", t.name,
                                                "unavailable" if not found.reachable else "not checked", found.error)
        elif not found.migrated:
            what = f"at schema revision {found.revision}" if found.revision else "has no tidegate tables"
            raise SchemaNotReady(f"target {t.name} ({t.masked}) {what}: run `tidegate db upgrade --target {t.name}`"
                                 " (or --all-targets)")
    return [(t.name, t.url) for t in chosen]


def _handler_modules(given: tuple[str, ...]) -> None:
    """--handlers: checked here (a typo fails the start, not every job) and handed to the worker processes
    through the environment they inherit; the runtime never imports job code itself."""
    configured = [n.strip() for n in os.environ.get(kinds.HANDLERS_ENV, "").split(",") if n.strip()]
    names = list(dict.fromkeys([*configured, *given]))
    for name in names:
        if not kinds.find_deployment_module(name):
            raise click.BadParameter(f"no module {name!r} (looked for installed and in the current directory)",
                                     param_hint=f"--handlers / ${kinds.HANDLERS_ENV}")
    if given:
        os.environ[kinds.HANDLERS_ENV] = ",".join(names)


@cli.group()
def maintenance() -> None:
    """Housekeeping of tidegate's own tables."""


@maintenance.command("run-once")
@click.option("--retention-jobs", default=7.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Days a finished queue job (and its checkpoint rows) is kept.")
@click.option("--retention-errors", default=30.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Days an etl_errors row is kept.")
@database_option
def maintenance_run_once(db: Database, retention_jobs: float, retention_errors: float) -> None:
    """Delete finished queue jobs and old etl_errors past their retention, in batches of 1,000."""
    from tidegate.worker.maintenance import run_once

    pruned = run_once(db.engine, RetentionConfig(retention_jobs * DAY, retention_errors * DAY))
    click.echo(f"deleted {pruned.queue_jobs} finished queue job(s), {pruned.etl_errors} etl_errors row(s)")


# -- enqueue (subcommands come from the job kinds) -------------------------------


@cli.group(cls=_PluginGroup)
def enqueue() -> None:
    """Put a job on the queue (the same as an INSERT INTO queue_jobs)."""


# -- watching -------------------------------------------------------------------


@cli.command("status")
@click.argument("job", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--watch", is_flag=True, help="Redraw every --interval seconds until interrupted.")
@click.option("--interval", default=2.0, show_default=True, type=click.FloatRange(0.2, 3600))
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000))
@click.option("--wide", is_flag=True, help="Whole job ids, each job on one line (checkpoint and note unwrapped).")
@click.option("--run", "run_id", metavar="RUN_ID",
              help="A fan-out run (the id `enqueue ... --targets` printed): the run as one line, then a line per"
                   " target. Exit 3 if no target holds a job of it, 5 if a target could not be read.")
@click.option("--targets", "targets_spec", metavar="SPEC",
              help="With --run: the targets to ask (names or patterns like 'shard_*'). Default: every target.")
@database_option
def status_cmd(db: Database, job: str | None, as_json: bool, watch: bool, interval: float, limit: int,
               wide: bool, run_id: str | None, targets_spec: str | None) -> None:
    """Every job (or JOB): status, processed/error counts, checkpoint, rate, ETA.

    Nothing is cut: ids are the shortest unique prefixes (8 characters or more, which every command
    takes), and in a terminal (or with $COLUMNS) the checkpoint and the note wrap at word boundaries.
    --watch redraws a live table with progress bars and the rate over the last minute.
    --run RUN_ID: a fan-out run across its targets (ops/targets.md).
    """
    if run_id is not None or targets_spec is not None:
        _run_status(job, run_id, targets_spec, as_json, watch, interval)
        return
    from tidegate.worker import control, status

    def fetch() -> list[dict]:
        with db.engine.connect() as conn:
            job_id = control.find_job(conn, job) if job else None
            return status.job_rows(conn, job_id, limit)

    if watch and not as_json:
        from tidegate.worker.watch import watch as live

        try:
            live(fetch, interval)
        except KeyboardInterrupt:
            pass
        return
    while True:
        rows = fetch()
        if as_json:
            echo_json(rows[0] if job and rows else rows)
        else:
            click.echo(status.render_table(rows, _terminal_width(), wide=wide) if rows else "no jobs")
        if not watch:
            return
        time.sleep(interval)


def _run_status(job: str | None, run_id: str | None, spec: str | None, as_json: bool, watch: bool,
                interval: float) -> None:
    from tidegate.worker import runs
    from tidegate.worker.cliutil import refuse_one_database, run_targets
    from tidegate.worker.errors import InvalidInput, NotFound

    if run_id is None:
        raise InvalidInput("--targets with status needs --run RUN_ID")
    if job is not None:
        raise InvalidInput("give a JOB or --run RUN_ID, not both")
    refuse_one_database("--run")
    run_id = runs.check_run_id(run_id)
    chosen = run_targets(spec)
    while True:
        parts = runs.read_run(chosen, run_id)
        if not parts:
            raise NotFound(f"no job of run {run_id} in {len(chosen)} target(s) ({', '.join(t.name for t in chosen)})")
        whole = runs.summarize(parts)
        if as_json:
            echo_json({"run_id": run_id, **whole, "targets": [
                {"target": p.target, "error": p.error, "jobs": p.jobs} for p in parts]})
        else:
            click.echo(_run_line(run_id, whole))
            for p in parts:
                if p.error:
                    click.echo(f"  {p.target:<20} UNREADABLE  {p.error}")
                for j in p.jobs:
                    click.echo(f"  {p.target:<20} {j['job_id']}  {_job_line(j)}")
        if not watch:
            break
        time.sleep(interval)
    if whole["unreadable"]:
        raise TidegateExit(f"{len(whole['unreadable'])} target(s) could not be read: {', '.join(whole['unreadable'])}",
                           5)


def _rows(processed: int, total: int | None) -> str:
    if not total:
        return f"{processed} rows"
    return f"{processed}/{total} rows ({min(100.0, 100.0 * processed / total):.0f}%)"


def _run_line(run_id: str, whole: dict) -> str:
    from tidegate.worker import status

    by = ", ".join(f"{n} {s}" for s, n in sorted(whole["by_status"].items()))
    unreadable = f", unreadable: {', '.join(whole['unreadable'])}" if whole["unreadable"] else ""
    return (f"run {run_id}: {whole['status']}  {_rows(whole['processed_count'], whole['total_estimate'])}"
            f"  {whole['rows_per_second']} rows/s  ETA {status.human_seconds(whole['eta_seconds'])}"
            f"  ({whole['jobs']} job(s): {by or 'none'}{unreadable})")


def _job_line(j: dict) -> str:
    from tidegate.worker import status

    rate = j["rows_per_second"]
    note = f"  {j['reason']}" if j["status"] in ("failed", "paused", "cancelled") and j.get("reason") else ""
    return (f"{j['status']:<9} {_rows(j['processed_count'], j['total_estimate'])}"
            f"  {'-' if rate is None else rate} rows/s  ETA {status.human_seconds(j['eta_seconds'])}"
            f"  errors {j['error_count']}{note}")


def _run_action(action: str, run_id: str, spec: str | None, actor: str, reason: str | None = None,
                changes: dict | None = None) -> None:
    """pause|resume|cancel|retry|set --run: every job of the run in every target, a line per job (or per target
    that could not be read); exit 3 if no target holds a job of the run, else the worst failure's code."""
    from tidegate.worker import runs
    from tidegate.worker.cliutil import refuse_one_database, run_targets
    from tidegate.worker.errors import NotFound

    refuse_one_database("--run")
    run_id = runs.check_run_id(run_id)
    chosen = run_targets(spec)
    outcomes = runs.act_on_run(chosen, run_id, action, actor=actor, reason=reason, changes=changes)
    if not outcomes:
        raise NotFound(f"no job of run {run_id} in {len(chosen)} target(s) ({', '.join(t.name for t in chosen)})")
    what = DONE.get(action) or ("set: " + ", ".join(f"{k}={'none' if v is None else v}"
                                                    for k, v in (changes or {}).items()))
    for o in outcomes:
        if o.error is None:
            click.echo(f"target {o.target}: {o.job_id} {what}")
        else:
            click.echo(f"target {o.target}: {o.job_id + ' ' if o.job_id else ''}error: {o.error}", err=True)
    failed = [o for o in outcomes if o.error]
    if failed:
        rest = "the others acted" if len(failed) < len(outcomes) else "none acted"
        raise TidegateExit(f"{len(failed)} of {len(outcomes)} failed ({', '.join(sorted({o.target for o in failed}))});"
                           f" {rest}", runs.worst(outcomes))


def _terminal_width() -> int | None:
    """$COLUMNS, else the terminal's width; None when the output is no terminal (a pipe: lines unwrapped)."""
    columns = os.environ.get("COLUMNS", "").strip()
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns if sys.stdout.isatty() else None
    except (OSError, ValueError):
        return None


@cli.command("errors")
@click.argument("job")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100000))
@click.option("--json", "as_json", is_flag=True)
@database_option
def errors_cmd(db: Database, job: str, limit: int, as_json: bool) -> None:
    """Items of JOB that failed in the handler (from etl_errors), newest first.

    Each item's sample (a copy of its source row) is shown only to a login that may read the job's
    source table and etl_errors.sample."""
    from tidegate.worker import control, store
    from tidegate.worker.redact import redact

    with db.engine.connect() as conn:
        job_id = control.find_job(conn, job)
        found = store.job_errors(conn, job_id, limit)
    if as_json:
        echo_json([{**r, "sample_hidden": found.sample_hidden} if found.sample_hidden else r for r in found.rows])
        return
    if not found.rows:
        click.echo("no failed items")
    for r in found.rows:
        click.echo(f"{r['created_at']:%Y-%m-%d %H:%M:%S}  slice {r['slice_no']}  item {r['item_key']}  "
                   f"{r['error_type']}: {redact(r['message'])}")
        click.echo(f"    sample hidden: {found.sample_hidden}" if found.sample_hidden else f"    sample: {r['sample']}")


@cli.command("set")
@click.argument("job", required=False)
@knobs.options(knobs.LIVE_KNOBS, clearing=True)
@actor_option
@click.option("--run", "run_id", metavar="RUN_ID", help="Every job of this fan-out run, in every target.")
@click.option("--targets", "targets_spec", metavar="SPEC", help="With --run: only these targets (names or patterns).")
@database_option
def set_cmd(db: Database, job: str | None, actor: str, run_id: str | None, targets_spec: str | None,
            **opts: object) -> None:
    """Change a job's pace: live, at its next batch (or: UPDATE backfill_jobs SET ...); before a worker has
    planned it, in its payload, so the plan uses them. A finished job: exit 4. --run RUN_ID: every job of a
    fan-out run, a line per target (exit code: the worst target's)."""
    from tidegate.worker import control

    changes = knobs.take(opts, knobs.LIVE_KNOBS, clearing=True)
    if not changes:
        raise click.UsageError("nothing to change: give at least one option")
    if run_id is not None or targets_spec is not None:
        _one_or_run(job, run_id)
        _run_action("set", run_id or "", targets_spec, actor, changes=changes)
        return
    if job is None:
        raise click.UsageError("give a JOB id or --run RUN_ID")
    with db.engine.begin() as conn:
        job_id = control.set_knobs(conn, job, changes, actor)
    click.echo(f"{job_id}: " + ", ".join(f"{k}={'none' if v is None else v}" for k, v in changes.items()))


@cli.command("web")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--refresh", default=2.0, show_default=True, type=click.FloatRange(0.5, 3600),
              help="Seconds between page refreshes.")
@click.option("--targets", "targets_spec", metavar="A,B,shard_*",
              help="Also show the fan-out runs over these targets (names or patterns; '*' for all): /runs."
                   " Without a database named too, the console shows runs only.")
@database_option
def web_cmd(db: Database, host: str, port: int, refresh: float, targets_spec: str | None) -> None:
    """Serve the status page and its JSON API (admin actions need $TIDEGATE_ADMIN_TOKEN).

    With --targets, also the fan-out runs over those targets: one line per run with its targets below,
    a page per run, and pause/resume/cancel of a whole run (ops/targets.md)."""
    from tidegate.worker.web import serve

    chosen = None
    if targets_spec is not None:
        from tidegate.worker.runs import select_targets

        chosen = select_targets(targets_spec)
    server = serve(db.engine if chosen is None or db.named else None, host, port, refresh, chosen)
    click.echo(f"tidegate status page on http://{host}:{server.server_address[1]}/", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


# -- operator actions -------------------------------------------------------------


DONE = {"pause": "paused", "resume": "resumed", "cancel": "cancelled", "retry": "queued for retry"}


def _action(name: str, doc: str) -> click.Command:
    @click.argument("job", required=False)
    @click.option("--reason", help="Why (shown in status, kept in the audit table).")
    @actor_option
    @click.option("--run", "run_id", metavar="RUN_ID",
                  help=f"{name.capitalize()} every job of this fan-out run, in every target: a line per target;"
                       " exit 3 if no target holds one, else the worst target's code (4 wrong state, 5 down).")
    @click.option("--targets", "targets_spec", metavar="SPEC",
                  help="With --run: only these targets (names or patterns like 'shard_*').")
    @database_option
    def command(db: Database, job: str | None, reason: str | None, actor: str, run_id: str | None,
                targets_spec: str | None, **extra: bool) -> None:
        from tidegate.worker import control

        if run_id is not None or targets_spec is not None:
            if extra.get("all_jobs"):
                raise click.UsageError("give --all or --run, not both")
            _one_or_run(job, run_id)
            _run_action(name, run_id or "", targets_spec, actor, reason)
            return
        with db.engine.begin() as conn:
            if extra.get("all_jobs"):
                ids = control.pause_all(conn, actor, reason)
                click.echo(f"paused {len(ids)} job(s)")
                return
            if not job:
                raise click.UsageError(f"give a JOB id{' or --all' if name == 'pause' else ''}")
            job_id = control.transition(conn, job, name, actor, reason)
        click.echo(f"{job_id} {DONE[name]}")

    command.__doc__ = doc
    if name == "pause":
        every = ("Pause every job that could start a batch: pending or running, and queued ones no worker"
                 " has planned yet (resume them one by one).")
        command = click.option("--all", "all_jobs", is_flag=True, help=every)(command)
    return cli.command(name)(command)


def _one_or_run(job: str | None, run_id: str | None) -> None:
    from tidegate.worker.errors import InvalidInput

    if run_id is None:
        raise InvalidInput("--targets needs --run RUN_ID (one job of one target: --target NAME JOB)")
    if job is not None:
        raise InvalidInput("give a JOB or --run RUN_ID, not both (one target's job: --target NAME JOB)")


_action("pause", "Pause JOB (or --all): no new batch starts; resume continues from the checkpoint.")
_action("resume", "Resume a paused JOB from its checkpoint.")
_action("cancel", "Cancel JOB: no new batch starts; finished batches stay.")
_action("retry", "Run a failed or cancelled JOB again from its checkpoint.")


def main() -> None:
    run_cli(cli)


if __name__ == "__main__":
    main()
