"""Checks shared by the job kinds' payload validation: bounded numbers and the owner field.

Each raises InvalidInput with a message that names the field, so a payload inserted by SQL
fails its job with a clear ``last_error``.
"""

from __future__ import annotations

from typing import Any

from worker.errors import InvalidInput


def bounded(value: Any, field: str, lo: float, hi: float, *, integer: bool = True) -> Any:
    """``value`` as an int (or, with ``integer=False``, a float) within ``[lo, hi]``."""
    kind, cast, allowed = ("an integer", int, int | str) if integer else ("a number", float, int | float | str)
    if isinstance(value, bool) or not isinstance(value, allowed):
        raise InvalidInput(f"{field} must be {kind}, got {value!r}")
    try:
        number = cast(value)
    except ValueError:
        raise InvalidInput(f"{field} must be {kind}, got {value!r}") from None
    if not lo <= number <= hi:
        show = str if integer else "{:g}".format
        raise InvalidInput(f"{field} must be between {show(lo)} and {show(hi)}, got {show(number)}")
    return number


def owner(value: Any) -> str:
    """Who owns the job: a non-empty string of at most 200 characters, trimmed."""
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise InvalidInput(f"owner must be a non-empty string of at most 200 characters, got {value!r}")
    return value.strip()
