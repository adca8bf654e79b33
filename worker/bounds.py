"""A numeric range and its check: the mechanics behind every bounded number tidegate takes.

The knobs' ranges themselves are in one table, worker/knobs.py. A :class:`Bound` checks a value as
typed or as read from JSON (``check``: a clear InvalidInput naming the field and the range) and pulls
one that slipped past anyway into range (``clamp``: the runtime's defence, worker/throttle.py).

NaN and infinities are outside every range (``lo <= x <= hi`` is false for them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tidegate.worker.errors import InvalidInput, quote

INT4 = 2**31 - 1


@dataclass(frozen=True)
class Bound:
    name: str
    lo: float
    hi: float
    integer: bool = True  # an integer, else a number (a float)

    def describe(self) -> str:
        return f"between {_show(self.lo)} and {_show(self.hi)}"

    def check(self, value: Any, field: str | None = None) -> Any:
        """``value`` (a number, or its text as typed) as an int or float in range; else InvalidInput
        naming ``field`` (default: the bound's name) and the range."""
        field = field or self.name
        kind = "an integer" if self.integer else "a number"
        allowed = int | str if self.integer else int | float | str
        # text as typed: ASCII digits only (Python's int() would take '１２' or '1_0' too)
        if isinstance(value, bool) or not isinstance(value, allowed) or isinstance(value, str) and (
                not value.isascii() or "_" in value):
            raise InvalidInput(f"{field} must be {kind} {self.describe()}, got {quote(value)}")
        try:
            number = int(value) if self.integer else float(value)
        except ValueError:  # not a number, or an integer of over 4,300 digits
            raise InvalidInput(f"{field} must be {kind} {self.describe()}, got {quote(value)}") from None
        except OverflowError:  # an integer too big for a float
            raise InvalidInput(f"{field} must be {self.describe()}, got {quote(value, 40)}") from None
        if not self.lo <= number <= self.hi:
            raise InvalidInput(f"{field} must be {self.describe()}, got {_show(number)}")
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


def owner(value: Any) -> str:
    """Who owns the job: a non-empty string of at most 200 characters, trimmed."""
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise InvalidInput(f"owner must be a non-empty string of at most 200 characters, got {quote(value, 60)}")
    return value.strip()
