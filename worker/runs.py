"""Fan-out runs (issue 15.3): one job per target database under one run id.

Each target keeps its own tidegate tables, so a run is not a row anywhere: it is the ``run_id`` its
jobs carry (queue_jobs.run_id, migration 0016). This module reads a run the one way every view of it
(`status --run`, the web page, metrics, rollout) needs: ask each target for the run's jobs, with a
target that cannot be read reported as such, never failing the whole read.
"""

from __future__ import annotations

import fnmatch
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tidegate.worker import targets as targets_mod
from tidegate.worker.errors import InvalidInput, quote
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
                raise InvalidInput(f"not a target pattern: {quote(part)} (names are [a-z0-9_-], patterns add * ? [...])")
            hits = [name for name in found if fnmatch.fnmatchcase(name, part)]
            if not hits:
                raise InvalidInput(f"no target matches {quote(part)}; known: {', '.join(found) or 'none'}")
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
    from tidegate.worker.db import first_line, make_engine, mask_url

    run_id = check_run_id(run_id)
    out = []
    for target in targets:
        engine = make_engine(target.url, application_name="tidegate-run", pool_size=1, max_overflow=0,
                             connect_timeout=timeout)
        try:
            with engine.connect() as conn:
                jobs = [row for job_id in store.run_job_ids(conn, run_id) for row in status.job_rows(conn, job_id)]
            if jobs:
                out.append(TargetRun(target.name, jobs))
        except Exception as err:  # a target's trouble is reported with it, the others still read
            cause = getattr(err, "orig", None) or err.__cause__ or err
            out.append(TargetRun(target.name, error=mask_url(first_line(cause))[:300]))
        finally:
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
