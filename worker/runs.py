"""Fan-out runs (issue 15.3): one job per target database under one run id.

Each target keeps its own tidegate tables, so a run is not a row anywhere: it is the ``run_id`` its
jobs carry (queue_jobs.run_id, migration 0016). This module reads a run the one way every view of it
(`status --run`, the web page, metrics, rollout) needs: ask each target for the run's jobs, with a
target that cannot be read reported as such, never failing the whole read. And it acts on one:
``enqueue_run`` (validate in every target, then one job each under a new run id) and ``act_on_run``
(pause, resume, cancel, retry, set on every job of it), each target's failure an ``Outcome`` of its own.
"""

from __future__ import annotations

import fnmatch
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tidegate.worker import targets as targets_mod
from tidegate.worker.errors import InvalidInput, quote, shorten
from tidegate.worker.targets import Target

#: How a run's state rolls up from its jobs' states, most telling first: a run is "failed" if any job
#: failed, else "running" if any runs, ... and "done" only when every job is done.
ROLLUP = ("failed", "running", "paused", "pending", "queued", "cancelled", "done")


def select_targets(spec: str) -> list[Target]:
    """The targets a ``--targets`` value names: comma-separated names or shell patterns (``shard_*``),
    each pattern matching at least one target, in the targets' order, each once."""
    found = targets_mod.load()
    parts = targets_mod.split_names(spec)
    if not parts:
        raise InvalidInput("--targets names no target")
    chosen: dict[str, Target] = {}
    for part in parts:
        if any(c in part for c in "*?["):
            if not all(c.isalnum() or c in "_-*?[]!" for c in part) or len(part) > 63:
                raise InvalidInput(f"not a target pattern: {quote(part)}"
                                   " (names are [a-z0-9_-], patterns add * ? [...])")
            hits = [name for name in found if fnmatch.fnmatchcase(name, part)]
            if not hits:
                known = shorten(", ".join(found), 400) or "none"
                raise InvalidInput(f"no target matches {quote(part)}; known: {known}")
            for name in hits:
                chosen.setdefault(name, found[name])
        else:
            chosen.setdefault(part, targets_mod.get(part))
    return list(chosen.values())


def check_run_id(value: str) -> str:
    try:
        return str(uuid.UUID(value.strip()))
    except (ValueError, AttributeError):
        raise InvalidInput(f"not a run id: {quote(value)} (a run id is a uuid, as enqueue printed it)") from None


def new_run_id() -> str:
    return str(uuid.uuid4())


@dataclass
class TargetRun:
    """One target's part of a run: its jobs' status rows (worker/status.py ``job_rows``), or why it
    could not be read."""

    target: str
    jobs: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


def read_run(targets: Iterable[Target], run_id: str, timeout: int = 5) -> list[TargetRun]:
    """Every job of ``run_id`` on each target (targets without one are left out). A target that is down
    or not migrated is a TargetRun with ``error`` set, never an exception."""
    from tidegate.worker import status, store

    run_id = check_run_id(run_id)
    out = []
    for target in targets:
        engine = None
        try:
            engine = target_engine(target, timeout)  # not migrated: says so, and which `db upgrade` to run
            with engine.connect() as conn:
                jobs = [row for job_id in store.run_job_ids(conn, run_id) for row in status.job_rows(conn, job_id)]
            if jobs:
                out.append(TargetRun(target.name, jobs))
        except Exception as err:  # a target's trouble is reported with it, the others still read
            out.append(TargetRun(target.name, error=failure(err)[0]))
        finally:
            if engine is not None:
                engine.dispose()
    return out


def summarize(parts: list[TargetRun]) -> dict[str, Any]:
    """The run as one line: rows processed and estimated, rate (sum over its running jobs), ETA (the
    slowest running target's), state rolled up (ROLLUP), and counts of jobs by state."""
    jobs = [j for p in parts for j in p.jobs]
    states: dict[str, int] = {}
    for j in jobs:
        states[j["status"]] = states.get(j["status"], 0) + 1
    rolled = next((s for s in ROLLUP if s in states), "unknown")
    if any(p.error for p in parts) and rolled == "done":
        rolled = "unknown"  # a target we could not read may hold a job that is not done
    etas = [j["eta_seconds"] for j in jobs if j["status"] == "running" and j["eta_seconds"] is not None]
    totals = [j["total_estimate"] for j in jobs]
    return {
        "status": rolled,
        "jobs": len(jobs),
        "targets": len(parts),
        "unreadable": [p.target for p in parts if p.error],
        "by_status": states,
        "processed_count": sum(j["processed_count"] for j in jobs),
        "error_count": sum(j["error_count"] for j in jobs),
        "total_estimate": sum(totals) if totals and None not in totals else None,
        "rows_per_second": round(sum(j["rows_per_second"] or 0 for j in jobs if j["status"] == "running"), 1),
        "eta_seconds": max(etas) if etas else None,
    }


# -- acting on a run: enqueue one job per target, pause/resume/cancel/retry/set every job of it -----------


@dataclass
class Outcome:
    """What one fan-out step did in one target: a job (``job_id``), or why not (``error`` and the exit code
    the same failure has on one database: 2 invalid, 3 not found, 4 wrong state, 5 down or not migrated)."""

    target: str
    job_id: str | None = None
    error: str | None = None
    exit_code: int = 0
    detail: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"target": self.target, "job_id": self.job_id}
        if self.error is not None:
            out.update(error=self.error, exit_code=self.exit_code)
        return {**out, **self.detail}


def failure(err: BaseException) -> tuple[str, int]:
    """An exception as one masked line and the exit code a single-database command would have exited with."""
    import psycopg
    from sqlalchemy.exc import DBAPIError

    from tidegate.worker.db import first_line, is_outage, mask_url
    from tidegate.worker.errors import DatabaseUnavailable, TidegateError

    if isinstance(err, TidegateError):
        return mask_url(str(err))[:1000], err.exit_code
    cause = getattr(err, "orig", None) or err.__cause__ or err
    line = mask_url(first_line(cause))[:300]
    if is_outage(err):
        return f"{DatabaseUnavailable()} ({line})", DatabaseUnavailable.exit_code
    if isinstance(err, DBAPIError) and isinstance(err.orig, psycopg.errors.InsufficientPrivilege):
        return f"{line} (the role lacks a grant: ops/roles.sql lists what each role needs)", 6
    if isinstance(err, DBAPIError):
        return f"the database refused: {line}", 1
    return line, 1


def worst(outcomes: Iterable[Outcome]) -> int:
    """The exit code of a fan-out command: 0, or the highest of its failed targets'."""
    return max((o.exit_code for o in outcomes if o.error is not None), default=0)


def target_engine(target: Target, timeout: int):  # type: ignore[no-untyped-def]
    """The target's engine, its schema checked (SchemaNotReady names `tidegate db upgrade --target NAME`)."""
    from tidegate.worker.db import make_engine
    from tidegate.worker.errors import SchemaNotReady
    from tidegate.worker.schema import check as check_schema

    engine = make_engine(target.url, application_name="tidegate-run", pool_size=1, max_overflow=0,
                         connect_timeout=timeout)
    try:
        check_schema(engine, f"target {target.name} ({target.masked})")
    except SchemaNotReady as err:
        engine.dispose()
        raise SchemaNotReady(str(err).replace("`tidegate db upgrade`",
                                              f"`tidegate db upgrade --target {target.name}`")) from None
    except BaseException:
        engine.dispose()
        raise
    return engine


def enqueue_run(targets: list[Target], job_type: str, payload: dict[str, Any], *, actor: str, queue: str = "default",
                priority: int | str | None = None, max_attempts: int | str | None = None, run_after: Any = None,
                all_or_nothing: bool = False, prepare: Any = None, timeout: int = 5) -> tuple[str, list[Outcome]]:
    """One job of ``job_type`` per target under a new run id: (the run id, an Outcome per target, in order).

    Validation (the kind's planning, rolled back) runs in every target first; ``prepare(conn)``, if given,
    runs before it and again before the insert, in the same transaction (an archive job's layout
    registration). A target that refuses (invalid there, down, not migrated) gets no job and the others
    get theirs; with ``all_or_nothing`` no target gets one unless every target validated and inserted: the
    inserts stay uncommitted until all succeeded (a commit that then fails cancels the jobs committed), so
    that mode holds one connection per target at once; otherwise a target's connection is closed when its
    step is done."""
    from tidegate.worker import control, store
    from tidegate.worker.enqueue import insert, queue_knobs, validate_on

    chosen = queue_knobs(priority, max_attempts)  # InvalidInput: nothing tried anywhere
    run_id = new_run_id()
    outcomes = {t.name: Outcome(t.name) for t in targets}
    engines: dict[str, Any] = {}
    seen: dict[tuple[int, str], str] = {}  # database identity -> the first target that named it
    try:
        for t in targets:  # 1. validate everywhere
            try:
                engines[t.name] = target_engine(t, timeout)
                with engines[t.name].connect() as conn:
                    identity = store.database_identity(conn)
                    if identity in seen:  # two names, one database: a second job would do the work twice
                        raise InvalidInput(f"target {t.name} is the same database as target {seen[identity]} "
                                           f"(database {identity[1]!r} of server {identity[0]}): no second job")
                    if identity is not None:
                        seen[identity] = t.name
                    if prepare is not None:
                        prepare(conn)
                    plan = validate_on(conn, job_type, payload)
                outcomes[t.name].detail = {"slices": len(plan.slices), "rows_estimate": plan.total_estimate}
            except Exception as err:  # the target is reported; the others are still validated
                outcomes[t.name].error, outcomes[t.name].exit_code = failure(err)
            finally:  # no idle connection kept per target meanwhile (hundreds of targets may share a server)
                if t.name in engines:
                    engines[t.name].dispose()
        refused = [o.target for o in outcomes.values() if o.error]
        if all_or_nothing and refused:
            for o in outcomes.values():
                if not o.error:
                    o.detail["skipped"] = f"not enqueued: --all-or-nothing and {', '.join(refused)} refused"
            return run_id, list(outcomes.values())
        valid = [t for t in targets if not outcomes[t.name].error]

        def add(conn: Any) -> str:
            if prepare is not None:
                prepare(conn)
            return insert(conn, job_type, payload, chosen, actor=actor, queue=queue, run_after=run_after,
                          run_id=run_id)

        if not all_or_nothing:  # 2. each target on its own
            for t in valid:
                try:
                    with engines[t.name].begin() as conn:
                        outcomes[t.name].job_id = add(conn)
                except Exception as err:
                    outcomes[t.name].error, outcomes[t.name].exit_code = failure(err)
                finally:
                    engines[t.name].dispose()
            return run_id, list(outcomes.values())
        # 2. all or nothing: insert everywhere, commit only when every insert succeeded
        open_: list[tuple[Target, Any, Any]] = []
        try:
            for t in valid:
                conn = engines[t.name].connect()
                trans = conn.begin()
                open_.append((t, conn, trans))
                outcomes[t.name].job_id = add(conn)
        except Exception as err:
            outcomes[t.name].error, outcomes[t.name].exit_code = failure(err)
            for o in outcomes.values():
                o.job_id = None
                if not o.error:
                    o.detail["skipped"] = f"not enqueued: --all-or-nothing and {t.name} refused"
            for _, conn, trans in open_:
                try:
                    trans.rollback()
                finally:
                    conn.close()
            return run_id, list(outcomes.values())
        committed: list[Target] = []
        for t, conn, trans in open_:
            try:
                trans.commit()
                committed.append(t)
            except Exception as err:
                outcomes[t.name].job_id = None
                outcomes[t.name].error, outcomes[t.name].exit_code = failure(err)
            finally:
                conn.close()
        if len(committed) < len(open_):  # a commit failed after others succeeded: take theirs back
            for t in committed:
                o = outcomes[t.name]
                try:
                    with engines[t.name].begin() as conn:
                        control.transition(conn, o.job_id or "", "cancel", actor,
                                           f"--all-or-nothing: another target's commit failed (run {run_id})")
                    o.detail["skipped"] = f"job {o.job_id} cancelled: --all-or-nothing and another target failed"
                except Exception as err:
                    message, o.exit_code = failure(err)
                    o.error = f"job {o.job_id} could not be cancelled: {message}"
        return run_id, list(outcomes.values())
    finally:
        for engine in engines.values():
            engine.dispose()


ACTIONS = ("pause", "resume", "cancel", "retry", "set")


def act_on_run(targets: Iterable[Target], run_id: str, action: str, *, actor: str, reason: str | None = None,
               changes: dict[str, object] | None = None, timeout: int = 5,
               only: Iterable[tuple[str, str]] | None = None) -> list[Outcome]:
    """``action`` (pause, resume, cancel, retry; set with ``changes``) on every job of ``run_id``, target by
    target, each job in its own transaction through worker/control.py (so each is audited in its own
    target's tidegate_audit). One Outcome per job acted on or refused, and per target that could not be
    read; targets without a job of the run are left out (none at all: the caller says not found). ``only``:
    just these (target name, job id) pairs of the run."""
    from tidegate.worker import control, store

    if action not in ACTIONS:
        raise InvalidInput(f"not a run action: {quote(action)}")
    if action == "set" and not changes:
        raise InvalidInput("set: nothing to change")
    run_id = check_run_id(run_id)
    wanted = set(only) if only is not None else None
    out: list[Outcome] = []
    for target in targets:
        if wanted is not None and not any(name == target.name for name, _ in wanted):
            continue
        try:
            engine = target_engine(target, timeout)
        except Exception as err:
            message, code = failure(err)
            out.append(Outcome(target.name, error=message, exit_code=code))
            continue
        try:
            with engine.connect() as conn:
                job_ids = store.run_job_ids(conn, run_id)
            for job_id in job_ids:
                if wanted is not None and (target.name, job_id) not in wanted:
                    continue
                try:
                    with engine.begin() as conn:
                        if action == "set":
                            control.set_knobs(conn, job_id, dict(changes or {}), actor)
                        else:
                            control.transition(conn, job_id, action, actor,
                                               reason or f"{action} --run {run_id} by {actor}")
                    out.append(Outcome(target.name, job_id))
                except Exception as err:  # this job is reported; the run's other jobs still act
                    message, code = failure(err)
                    out.append(Outcome(target.name, job_id, message, code))
        except Exception as err:
            message, code = failure(err)
            out.append(Outcome(target.name, error=message, exit_code=code))
        finally:
            engine.dispose()
    return out
