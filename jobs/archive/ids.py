"""``--ids-file``: stream ids from a file, the seed's "reactivation from CSV".

Two shapes: a CSV whose header has an ``stream_id`` or ``id`` column (``discover --csv`` writes
one: seq, stream_id, ...), or one id a line. Blank lines and ``#`` comments are skipped. Every id
is checked against the layout's stream key type (a uuid, an integer, else text), and a bad one is
refused with its line number: nothing is enqueued from a file with a single bad line.
"""

from __future__ import annotations

import csv
import io
import uuid
from pathlib import Path

from tidegate.worker.errors import InvalidInput, quote

MAX_BYTES = 64 * 1024 * 1024
MAX_IDS = 1_000_000
MAX_ID = 1000
HEADERS = ("stream_id", "id")  # the first one a header has wins
INTEGERS = {"smallint": 2**15, "integer": 2**31, "bigint": 2**63}


def read(path: Path, key_type: str) -> list[str]:
    """The file's ids, in file order without repeats, each valid for ``key_type`` (format_type's spelling)."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as err:
        raise InvalidInput(f"--ids-file {quote(str(path))}: {err.strerror}") from None
    if len(raw) > MAX_BYTES:
        raise InvalidInput(f"--ids-file {quote(str(path))}: larger than {MAX_BYTES // 1048576} MiB")
    try:
        body = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput(f"--ids-file {quote(str(path))}: not UTF-8 text") from None
    lines = body.splitlines()
    first = next((n for n, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#")), None)
    if first is None:
        raise InvalidInput(f"--ids-file {quote(str(path))}: no stream id in it")
    header = [h.strip().lower() for h in next(csv.reader([lines[first]]))]
    column = next((header.index(h) for h in HEADERS if h in header), None)
    if column is None and len(header) > 1:
        raise InvalidInput(f"--ids-file {quote(str(path))} line {first + 1}: a CSV header needs a"
                           f" stream_id or id column, got {', '.join(header)}")
    found: dict[str, None] = {}
    rows = enumerate(csv.reader(io.StringIO("\n".join(lines))), start=1)
    for number, row in rows:
        if number <= first + (column is not None) or not row or row[0].lstrip().startswith("#"):
            continue
        cell = row[column or 0].strip() if len(row) > (column or 0) else ""
        if not cell:
            if not any(c.strip() for c in row):
                continue
            raise InvalidInput(f"--ids-file {quote(str(path))} line {number}: no stream id")
        found[check(cell, key_type, f"--ids-file {quote(str(path))} line {number}")] = None
        if len(found) > MAX_IDS:
            raise InvalidInput(f"--ids-file {quote(str(path))}: more than {MAX_IDS:,} ids; split it into jobs")
    if not found:
        raise InvalidInput(f"--ids-file {quote(str(path))}: no stream id in it")
    return list(found)


def check(value: str, key_type: str, where: str) -> str:
    """``value`` as the stream key type reads it; raises InvalidInput naming ``where``."""
    if key_type == "uuid":
        try:
            return str(uuid.UUID(value))
        except ValueError:
            raise InvalidInput(f"{where}: {quote(value[:80])} is not a uuid (the layout's stream key is one)") from None
    if key_type in INTEGERS:
        bound = INTEGERS[key_type]
        try:
            number = int(value)
        except ValueError:
            number = None
        if number is None or not -bound <= number < bound:
            raise InvalidInput(f"{where}: {quote(value[:80])} is not a {key_type} (the layout's stream key)")
        return str(number)
    if len(value) > MAX_ID or any(ord(c) < 32 for c in value):
        raise InvalidInput(f"{where}: {quote(value[:80])} is not a stream id (at most {MAX_ID} characters,"
                           " no control characters)")
    return value
