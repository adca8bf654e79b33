"""Checks shared by the job kinds' payload validation: bounded numbers, the pace knobs, the owner field.

Each raises InvalidInput with a message that names the field and its range, so a payload inserted by
SQL fails its job with a clear ``last_error``. The knobs' ranges are worker/bounds.py's, the same the
CLI and the database's CHECK constraints hold.
"""

from __future__ import annotations

from typing import Any

from tidegate.worker import bounds
from tidegate.worker.errors import InvalidInput, quote

# payload fields that become backfill_jobs knob columns; absent or null means the column's default
PACE_KNOBS = ("max_rows_per_second", "sleep_between_batches", "target_batch_seconds", "min_batch_size",
              "max_batch_size", "row_limit", "error_rate_threshold")


def bounded(value: Any, field: str, lo: float, hi: float, *, integer: bool = True) -> Any:
    """``value`` as an int (or, with ``integer=False``, a float) within ``[lo, hi]``."""
    return bounds.Bound(field, lo, hi, integer).check(value)


def knobs(p: dict[str, Any], *, default_batch: int, max_batch: int = bounds.MAX_BATCH) -> None:
    """Check (in place) ``batch_size``, ``concurrency`` and every pace knob the payload gives;
    ``max_batch``: the kind's own cap on a batch, at most the column's."""
    p["batch_size"] = bounds.check("batch_size", p.get("batch_size", default_batch), hi=max_batch)
    p["concurrency"] = bounds.check("concurrency", p.get("concurrency", 1))
    for field in ("min_batch_size", "max_batch_size"):
        if p.get(field) is not None:
            p[field] = bounds.check(field, p[field], hi=max_batch)
    for field in PACE_KNOBS:
        if p.get(field) is not None:
            p[field] = bounds.check(field, p[field])
    if (p.get("min_batch_size") or 1) > (p.get("max_batch_size") or max_batch):
        raise InvalidInput("min_batch_size must not exceed max_batch_size")


def owner(value: Any) -> str:
    """Who owns the job: a non-empty string of at most 200 characters, trimmed."""
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise InvalidInput(f"owner must be a non-empty string of at most 200 characters, got {quote(value, 60)}")
    return value.strip()
