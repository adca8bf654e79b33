"""Fan-out runs seen and moved as a whole (issue 15.3): the web console's runs pages and `tidegate rollout
--run` build on this; worker/runs.py reads one run.

* :func:`read_runs`: the newest runs across targets (each target asked once, the targets in parallel),
  each as worker/runs.py's TargetRun parts, with every unreadable target listed under every run (it may
  hold a job of any of them: worker/runs.py ``summarize`` then never calls the run done).
* :func:`act_run`: pause, resume or cancel every job of a run (worker/runs.py ``act_on_run``), as the
  console and rollout want it: a job the move does not apply to (pause a done job, resume a running one)
  is skipped, not an error; a target that cannot be reached is reported with its error.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from tidegate.worker.errors import IllegalTransition, InvalidInput, NotFound
from tidegate.worker.runs import TargetRun, act_on_run, check_run_id, failure, target_engine
from tidegate.worker.targets import Target

RUN_ACTIONS = ("pause", "resume", "cancel")
DONE = {"pause": "paused", "resume": "resumed", "cancel": "cancelled"}
PARALLEL = 8  # targets asked at once: a target that does not answer costs its connect timeout, not n of them


def _error(err: BaseException) -> str:
    return failure(err)[0]


def _recent(target: Target, limit: int, timeout: int) -> dict[str, list[dict[str, Any]]] | str:
    """{run_id: the target's jobs of it} for its ``limit`` newest runs, or why the target could not be read."""
    from tidegate.worker import status, store

    try:
        engine = target_engine(target, timeout)
    except Exception as err:  # down or not migrated: reported with the target, the others still read
        return _error(err)
    try:
        with engine.connect() as conn:
            return {run_id: [row for job_id in store.run_job_ids(conn, run_id) for row in status.job_rows(conn, job_id)]
                    for run_id in store.recent_runs(conn, limit)}
    except Exception as err:  # a target's trouble is reported with it, the others still read
        return _error(err)
    finally:
        engine.dispose()


def read_runs(targets: Iterable[Target], limit: int = 20, timeout: int = 5) -> tuple[list[tuple[str, list[TargetRun]]],
                                                                                   list[TargetRun]]:
    """The ``limit`` newest runs over ``targets`` (newest first, by their newest job), each with its
    targets' parts, and the unreadable targets (also appended to every run's parts)."""
    targets = list(targets)
    if not targets:
        return [], []
    with ThreadPoolExecutor(min(PARALLEL, len(targets)), thread_name_prefix="tidegate-run") as pool:
        found = list(pool.map(lambda t: _recent(t, limit, timeout), targets))
    down = [TargetRun(t.name, error=f) for t, f in zip(targets, found, strict=True) if isinstance(f, str)]
    runs: dict[str, list[TargetRun]] = {}
    for target, got in zip(targets, found, strict=True):
        if isinstance(got, dict):
            for run_id, jobs in got.items():
                if jobs:
                    runs.setdefault(run_id, []).append(TargetRun(target.name, jobs))
    newest = sorted(runs, key=lambda r: (max(datetime.fromisoformat(j["created_at"]) for p in runs[r] for j in p.jobs),
                                         r), reverse=True)  # as instants: targets may differ in TimeZone
    return [(run_id, runs[run_id] + down) for run_id in newest[:limit]], down


def act_run(targets: Iterable[Target], run_id: str, action: str, actor: str, reason: str | None = None,
            timeout: int = 5, *, only: Iterable[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
    """``action`` (pause, resume, cancel) on every job of ``run_id`` in ``targets`` (or only the
    (target, job_id) pairs in ``only``), through worker/runs.py ``act_on_run``: one entry per job
    ({target, job_id, outcome}: the action's past tense, or ``skipped: ...`` when the job's state does not
    allow it) or per unreachable target ({target, error}). NotFound when no target readable holds a job of it."""
    if action not in RUN_ACTIONS:
        raise InvalidInput(f"a run can be paused, resumed or cancelled, not {action!r}")
    targets = list(targets)
    run_id = check_run_id(run_id)
    outcomes = act_on_run(targets, run_id, action, actor=actor, reason=reason or f"{action} run {run_id} by {actor}",
                          timeout=timeout, only=only)
    out: list[dict[str, Any]] = []
    for o in outcomes:
        if o.job_id is None:
            out.append({"target": o.target, "error": o.error})
        elif o.error is None:
            out.append({"target": o.target, "job_id": o.job_id, "outcome": DONE[action]})
        elif o.exit_code == IllegalTransition.exit_code:
            out.append({"target": o.target, "job_id": o.job_id, "outcome": "skipped: " + o.error.split(": ", 1)[-1]})
        else:
            out.append({"target": o.target, "job_id": o.job_id, "error": o.error})
    if not out:
        raise NotFound(f"no job of run {run_id} in {', '.join(t.name for t in targets) or 'no target'}")
    return out
