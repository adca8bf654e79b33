"""Checks shared by the job kinds' payload validation: bounded numbers, the owner field.

Each raises InvalidInput with a message that names the field and its range, so a payload inserted by
SQL fails its job with a clear ``last_error``. The knob fields are checked by worker/knobs.py's
``check_payload``, against the ranges the CLI and the database's CHECK constraints hold.
"""

from __future__ import annotations

from typing import Any

from tidegate.worker import bounds
from tidegate.worker.bounds import owner  # noqa: F401  (the kinds' payloads: Payload.common)


def bounded(value: Any, field: str, lo: float, hi: float, *, integer: bool = True) -> Any:
    """``value`` as an int (or, with ``integer=False``, a float) within ``[lo, hi]``."""
    return bounds.Bound(field, lo, hi, integer).check(value)
