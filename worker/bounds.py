"""The allowed range of every knob, in one table.

Used by the CLI's options (`set`, `enqueue`), by the job kinds' payload validation (so a
payload inserted by SQL is held to the same range), by migration 0009's CHECK constraints
(so a runbook's ``UPDATE backfill_jobs SET ...`` is too), and by the runtime, which clamps
whatever slipped past anyway (worker/throttle.py).

NaN and infinities are outside every range (``lo <= x <= hi`` is false for them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tidegate.worker.errors import InvalidInput, quote

INT4 = 2**31 - 1
INT8 = 2**63 - 1


@dataclass(frozen=True)
class Bound:
    name: str
    lo: float
    hi: float
    integer: bool = True
    table: str | None = None  # the column that holds it, CHECKed by migration 0009 (None: not a column)
    clearable: bool = False  # NULL (`set ... none`) means "no such limit"

    def describe(self, hi: float | None = None) -> str:
        return f"between {_show(self.lo)} and {_show(self.hi if hi is None else hi)}"

    def check(self, value: Any, field: str | None = None, *, hi: float | None = None) -> Any:
        """``value`` (a number, or its text as typed) as an int or float in range; else InvalidInput
        naming the field and the range. ``hi``: a narrower upper bound (a kind's own limit)."""
        field = field or self.name
        top = self.hi if hi is None else hi
        kind = "an integer" if self.integer else "a number"
        allowed = int | str if self.integer else int | float | str
        if isinstance(value, bool) or not isinstance(value, allowed):
            raise InvalidInput(f"{field} must be {kind} {self.describe(top)}, got {quote(value)}")
        try:
            number = int(value) if self.integer else float(value)
        except ValueError:  # not a number, or an integer of over 4,300 digits
            raise InvalidInput(f"{field} must be {kind} {self.describe(top)}, got {quote(value)}") from None
        except OverflowError:  # an integer too big for a float
            raise InvalidInput(f"{field} must be {self.describe(top)}, got {quote(value, 40)}") from None
        if not self.lo <= number <= top:
            raise InvalidInput(f"{field} must be {self.describe(top)}, got {_show(number)}")
        return number

    def clamp(self, value: Any, fallback: Any) -> Any:
        """The runtime's defence: ``value`` pulled into range; ``fallback`` for NaN or a non-number."""
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            return fallback
        clamped = min(max(value, self.lo), self.hi)
        return int(clamped) if self.integer else float(clamped)


def _show(number: float) -> str:
    if isinstance(number, int):
        return quote(number, 40)
    return f"{number:g}"


_KNOBS = [
    # the pace knobs of a job: backfill_jobs columns, changed live by `tidegate set` or an UPDATE
    Bound("batch_size", 1, 100_000, table="backfill_jobs"),
    Bound("concurrency", 1, 64, table="backfill_jobs"),
    Bound("max_rows_per_second", 0.001, 1e9, integer=False, table="backfill_jobs", clearable=True),
    Bound("sleep_between_batches", 0, 3600, integer=False, table="backfill_jobs"),
    Bound("target_batch_seconds", 0.01, 3600, integer=False, table="backfill_jobs", clearable=True),
    Bound("min_batch_size", 1, 100_000, table="backfill_jobs"),
    Bound("max_batch_size", 1, 100_000, table="backfill_jobs"),
    Bound("row_limit", 1, 10**15, table="backfill_jobs", clearable=True),
    Bound("error_rate_threshold", 0, 1, integer=False, table="backfill_jobs"),
    # queue options (the column types hold them in SQL already: int4, CHECK max_attempts > 0)
    Bound("priority", -INT4 - 1, INT4),
    Bound("max_attempts", 1, 1000),
]
KNOBS: dict[str, Bound] = {b.name: b for b in _KNOBS}
CHECKED = [b for b in _KNOBS if b.table]  # the columns migration 0009 constrains

MAX_BATCH = int(KNOBS["batch_size"].hi)
MAX_CONCURRENCY = int(KNOBS["concurrency"].hi)


def check(name: str, value: Any, field: str | None = None, *, hi: float | None = None) -> Any:
    """``value`` checked against the bound of knob ``name`` (see :meth:`Bound.check`)."""
    return KNOBS[name].check(value, field, hi=hi)
