"""Range keys: integers, dates or timestamps, half-open ``[from, to)``.

A slice's cursor is an *exclusive* lower bound: a batch covers ``(cursor, hi]``.
The first cursor of a range is therefore one unit below ``from`` (1 for
integers, a day for dates, 1 microsecond — PostgreSQL's timestamp resolution —
for timestamps), which keeps both bounds exact. Keys are stored as canonical
text in the checkpoint tables so a human can read them.

A key has the Python type of its column, and that type travels in the text:

- ``timestamp with time zone``: an aware datetime, always in UTC
  (``2024-03-10T07:00:00+00:00``). Values read from the database come in the
  session's zone; :func:`from_db` brings them to UTC, because Python compares
  and subtracts two datetimes of one ``ZoneInfo`` on the wall clock, which is
  wrong across a DST change.
- ``timestamp without time zone``: a naive datetime (``2024-03-10T02:30:00``),
  bound as ``timestamp``, so the session's time zone never shifts it. A bound
  given with an offset is converted to UTC first: tidegate reads naive
  timestamps as UTC.
- ``date``: a date (``2024-03-10``).
- ``smallint``, ``integer``, ``bigint``: an int. A range reaching past the
  column's width is clipped to it.

``backfill_jobs.key_type`` stores only the family (``bigint`` or
``timestamptz``); :func:`decode` tells a date, a naive and an aware timestamp
apart by their text, which :func:`encode` wrote.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal

from tidegate.worker.errors import InvalidInput, quote

KeyType = Literal["bigint", "timestamptz"]  # the family, as backfill_jobs.key_type stores it
Key = int | datetime | date

_MICRO = timedelta(microseconds=1)
_DAY = timedelta(days=1)
# a day inside Python's datetime range at both ends, so one unit below or above a key (and the
# conversion of an offset to UTC) never overflows
_FIRST = datetime(1, 1, 2)
_LAST = datetime(9999, 12, 30)


@dataclass(frozen=True)
class Kind:
    """What a key column holds: its family and, for integers, its width."""

    pg_type: str
    family: KeyType
    lowest: int | None = None
    highest: int | None = None


SMALLINT = Kind("smallint", "bigint", -(2**15), 2**15 - 1)
INTEGER = Kind("integer", "bigint", -(2**31), 2**31 - 1)
BIGINT = Kind("bigint", "bigint", -(2**63), 2**63 - 1)
TIMESTAMPTZ = Kind("timestamp with time zone", "timestamptz")
TIMESTAMP = Kind("timestamp without time zone", "timestamptz")
DATE = Kind("date", "timestamptz")
KINDS = {k.pg_type: k for k in (SMALLINT, INTEGER, BIGINT, TIMESTAMPTZ, TIMESTAMP, DATE)}
_FAMILIES: dict[str, Kind] = {"bigint": BIGINT, "timestamptz": TIMESTAMPTZ}


def kind_of(pg_type: str) -> Kind:
    found = KINDS.get(pg_type)
    if found is None:
        raise InvalidInput(
            f"key column type {quote(pg_type)} is not supported: use a smallint, integer, bigint, date,"
            " timestamp or timestamptz column"
        )
    return found


def parse(kind: Kind | KeyType, value: object, what: str = "key") -> Key:
    """A user's value (CLI text, JSON number or string) as a key of ``kind`` (a column's
    :class:`Kind`, or a family name: ``"bigint"``, ``"timestamptz"``)."""
    if isinstance(kind, str):
        kind = _FAMILIES[kind]
    if kind.family == "bigint":
        return _parse_int(value, what)
    if kind is DATE:
        return _parse_date(value, what)
    ts = _parse_ts(value, what)
    if ts.tzinfo is not None:
        try:
            ts = ts.astimezone(UTC)
        except (OverflowError, ValueError):
            raise InvalidInput(f"{what}: {quote(value)} is out of range (years 1 to 9999)") from None
    elif kind is TIMESTAMPTZ:
        ts = ts.replace(tzinfo=UTC)  # naive text for a timestamptz column means UTC, whatever the session says
    if not _FIRST <= ts.replace(tzinfo=None) <= _LAST:
        raise InvalidInput(f"{what}: {quote(value)} is out of range (0001-01-02 to 9999-12-30)")
    return ts.replace(tzinfo=None) if kind is TIMESTAMP else ts


def _parse_int(value: object, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > 10**100:  # beyond any column's width; also far below Python's digit limit for str()
            raise InvalidInput(f"{what}: an integer of more than 100 digits is out of range")
        return value
    if isinstance(value, str) and len(value) <= 100:
        digits = value.strip().removeprefix("-")
        if digits.isdecimal():
            return int(value.strip())
    raise InvalidInput(f"{what}: expected an integer, got {quote(value)}")


def _parse_ts(value: object, what: str) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    if isinstance(value, str) and len(value) <= 100:
        try:
            return datetime.fromisoformat(value.strip())
        except ValueError:
            pass
    raise InvalidInput(f"{what}: expected an ISO 8601 timestamp like 2024-01-01T00:00:00Z, got {quote(value)}")


def _parse_date(value: object, what: str) -> date:
    if isinstance(value, str) and len(value) <= 100:
        try:
            day = date.fromisoformat(value.strip())
        except ValueError:
            pass
        else:
            if _FIRST.date() <= day <= _LAST.date():
                return day
    elif isinstance(value, date) and not isinstance(value, datetime) and _FIRST.date() <= value <= _LAST.date():
        return value
    raise InvalidInput(f"{what}: expected a date from 0001-01-02 to 9999-12-30 like 2024-01-01, got {quote(value)}")


def clip(kind: Kind, lo: Key, hi: Key) -> tuple[Key, Key]:
    """``[lo, hi)`` within the column's width: an integer range reaching past it is cut to it, one
    wholly outside it is an error (no key of the column can be in it)."""
    if kind.lowest is None or kind.highest is None:
        return lo, hi
    assert isinstance(lo, int) and isinstance(hi, int)
    if lo > kind.highest or hi <= kind.lowest:
        raise InvalidInput(f"range [{lo}, {hi}) holds no {kind.pg_type} key: a {kind.pg_type} is between"
                           f" {kind.lowest} and {kind.highest}")
    return max(lo, kind.lowest), min(hi, kind.highest + 1)


def from_db(value: Key) -> Key:
    """A key the database returned, in canonical form (aware timestamps in UTC)."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC)
    return value


def as_instant(key: Key) -> datetime | None:
    """A time key as an aware datetime for a ``timestamptz`` column (naive and date keys read as UTC,
    never as the session's zone); None for an integer key."""
    if isinstance(key, int):
        return None
    if not isinstance(key, datetime):
        key = datetime(key.year, key.month, key.day)
    return key if key.tzinfo is not None else key.replace(tzinfo=UTC)


def encode(key: Key) -> str:
    return str(key) if isinstance(key, int) else from_db(key).isoformat()


def decode(key_type: KeyType, text: str) -> Key:
    if key_type == "bigint":
        return int(text)
    if len(text) == 10:  # 2024-03-10: a date key
        return date.fromisoformat(text)
    return from_db(datetime.fromisoformat(text))  # naive text stays naive


def _unit(key: Key) -> timedelta | int:
    if isinstance(key, datetime):
        return _MICRO
    return _DAY if isinstance(key, date) else 1


def before(key: Key) -> Key:
    """The exclusive cursor that starts a range at ``key``."""
    return from_db(key) - _unit(key)  # type: ignore[operator]


def check_range(lo: Key, hi: Key) -> None:
    if not lo < hi:  # type: ignore[operator]
        raise InvalidInput(f"empty or reversed range: from {encode(lo)} must be before to {encode(hi)}")


def after(key: Key) -> Key:
    """The smallest key above ``key``."""
    return from_db(key) + _unit(key)  # type: ignore[operator]


def midpoint(cursor: Key, end: Key, min_width: int = 3) -> Key | None:
    """A cut inside the open range (cursor, end): None when there is no room for two pieces, or, for
    integer keys, when fewer than ``min_width`` keys are left (the runner passes two batches: such a
    slice holds at most two batches of rows, and finishing it beats handing half of it over)."""
    if isinstance(cursor, int):
        assert isinstance(end, int)
        return cursor + (end - cursor) // 2 if end - cursor >= max(3, min_width) else None
    cursor, end = from_db(cursor), from_db(end)  # one job's keys: never naive and aware at once
    unit = _unit(cursor)
    width = (end - cursor) // unit  # type: ignore[operator]
    return cursor + unit * (width // 2) if width >= 3 else None  # type: ignore[operator]
