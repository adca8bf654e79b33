"""Range keys: integers or timestamps, half-open ``[from, to)``.

A slice's cursor is an *exclusive* lower bound: a batch covers ``(cursor, hi]``.
The first cursor of a range is therefore one unit below ``from`` (1 for
integers, 1 microsecond — PostgreSQL's timestamp resolution — for
timestamps), which keeps both bounds exact. Keys are stored as canonical text
in the checkpoint tables so a human can read them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

from worker.errors import InvalidInput, quote

KeyType = Literal["bigint", "timestamptz"]
Key = int | datetime

INT_TYPES = {"smallint", "integer", "bigint"}
TS_TYPES = {"timestamp with time zone", "timestamp without time zone"}
_MICRO = timedelta(microseconds=1)


def key_type_of(pg_type: str) -> KeyType:
    if pg_type in INT_TYPES:
        return "bigint"
    if pg_type in TS_TYPES:
        return "timestamptz"
    raise InvalidInput(
        f"key column type {quote(pg_type)} is not supported: use an integer or timestamp column"
    )


def parse(key_type: KeyType, value: object, what: str = "key") -> Key:
    """A user's value (CLI text, JSON number or string) as a typed key."""
    if key_type == "bigint":
        if isinstance(value, bool):
            raise InvalidInput(f"{what}: expected an integer, got {quote(value)}")
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value.strip())
        raise InvalidInput(f"{what}: expected an integer, got {quote(value)}")
    if isinstance(value, datetime):
        ts = value
    elif isinstance(value, str):
        try:
            ts = datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidInput(
                f"{what}: expected an ISO 8601 timestamp like 2024-01-01T00:00:00Z, got {quote(value)}"
            ) from None
    else:
        raise InvalidInput(f"{what}: expected an ISO 8601 timestamp, got {quote(value)}")
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def encode(key: Key) -> str:
    return key.isoformat() if isinstance(key, datetime) else str(key)


def decode(key_type: KeyType, text: str) -> Key:
    return int(text) if key_type == "bigint" else datetime.fromisoformat(text)


def before(key: Key) -> Key:
    """The exclusive cursor that starts a range at ``key``."""
    return key - _MICRO if isinstance(key, datetime) else key - 1


def check_range(lo: Key, hi: Key) -> None:
    if not lo < hi:
        raise InvalidInput(f"empty or reversed range: from {encode(lo)} must be before to {encode(hi)}")


def after(key: Key) -> Key:
    """The smallest key above ``key``."""
    return key + _MICRO if isinstance(key, datetime) else key + 1


def midpoint(cursor: Key, end: Key, min_width: int = 3) -> Key | None:
    """A cut inside the open range (cursor, end): None when there is no room for two pieces, or, for
    integer keys, when fewer than ``min_width`` keys are left (the runner passes two batches: such a
    slice holds at most two batches of rows, and finishing it beats handing half of it over)."""
    if isinstance(cursor, datetime):
        assert isinstance(end, datetime)
        width = (end - cursor) // _MICRO
        return cursor + _MICRO * (width // 2) if width >= 3 else None
    assert isinstance(end, int)
    return cursor + (end - cursor) // 2 if end - cursor >= max(3, min_width) else None
