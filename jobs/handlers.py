"""Python handlers for backfill-range, registered by name.

Two forms:

* an :class:`ItemHandler` (the fast path): ``transform(row)`` turns one source
  row into output records in Python — raising for a bad item, which goes to
  ``etl_errors`` while the batch goes on — and ``write(conn, records)`` writes
  the whole batch's records set-based (an upsert, so reprocessing is
  idempotent);
* a plain function ``fn(conn, row)`` (``module:function``): called per row
  inside a SAVEPOINT, so a failing row rolls back alone — when the failure is
  the row's fault (worker/db.py ``is_row_fault``). An error of the database or
  the transaction (a full disk, a statement timeout, a serialization failure,
  a read-only transaction...) is raised: the whole batch rolls back and is
  retried, so no row is ever filed as a bad item for the database's fault.

Handlers run inside the batch's transaction. Effects outside the database are
not rolled back with it: such handlers must be idempotent.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from worker.db import is_row_fault
from worker.errors import InvalidInput
from worker.kinds import ItemError
from worker.redact import error_text

SAMPLE_CHARS = 1000


class ItemHandler:
    """Subclass and set ``name``; optionally the default ``source`` and ``key``."""

    name: str = ""
    source: str | None = None
    key: str | None = None
    # for `tidegate verify`: the derived table and its unique key, e.g.
    # {"table": "user_troops", "key": ["user_id", "troop_id"]}; check_row recomputes one source row
    derived: dict[str, Any] | None = None

    def transform(self, row: Mapping[str, Any]) -> Iterable[Any]:
        raise NotImplementedError

    def write(self, conn: Connection, records: list[Any]) -> None:
        raise NotImplementedError

    def check_row(self, conn: Connection, row: Mapping[str, Any]) -> list[str]:
        """Recompute one processed source row and compare with the derived rows: the mismatches."""
        return []


RowFunction = Callable[[Connection, Mapping[str, Any]], None]


@dataclass(frozen=True)
class Resolved:
    ref: str
    handler: ItemHandler | None = None
    function: RowFunction | None = None


_registry: dict[str, ItemHandler] = {}


def register(handler: ItemHandler) -> ItemHandler:
    if not handler.name:
        raise ValueError("a handler needs a name")
    _registry[handler.name] = handler
    return handler


def registered() -> dict[str, ItemHandler]:
    return dict(_registry)


def default_handler() -> str:
    """The deployment's default handler for payloads that name none (the runbook's INSERT)."""
    return os.environ.get("TIDEGATE_DEFAULT_HANDLER", "hero_troops")


def resolve(ref: object) -> Resolved:
    if not isinstance(ref, str) or not ref.strip():
        raise InvalidInput(f"handler must be a name or module:function, got {ref!r}")
    ref = ref.strip()
    found = registered().get(ref)
    if found is not None:
        return Resolved(ref, handler=found)
    if ":" not in ref:
        raise InvalidInput(
            f"unknown handler {ref!r}; registered: {', '.join(sorted(registered())) or 'none'}"
            " (or give module:function, or sql:PATH on the CLI)"
        )
    module_name, _, attr = ref.partition(":")
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise InvalidInput(f"handler {ref!r} cannot be imported: {err}") from None
    if isinstance(target, ItemHandler):
        return Resolved(ref, handler=target)
    if callable(target):
        return Resolved(ref, function=target)
    raise InvalidInput(f"handler {ref!r} is neither an ItemHandler nor a function")


def item_key(row: Mapping[str, Any], key_columns: Sequence[str]) -> str:
    return ",".join(str(row[c]) for c in key_columns)


def sample(row: Mapping[str, Any]) -> str:
    text = json.dumps(dict(row), default=str)
    return text if len(text) <= SAMPLE_CHARS else text[: SAMPLE_CHARS - 1] + "…"


def run(
    conn: Connection, resolved: Resolved, rows: Sequence[Mapping[str, Any]], key_columns: Sequence[str]
) -> list[ItemError]:
    """Run a handler over one batch's rows; returns the items that failed."""
    errors: list[ItemError] = []
    if resolved.handler is not None:
        records: list[Any] = []
        for row in rows:
            try:
                records.extend(resolved.handler.transform(row))
            except Exception as err:  # a bad item is recorded, the batch goes on
                if isinstance(err, MemoryError):
                    raise
                errors.append(_item_error(row, key_columns, err))
        if records:
            resolved.handler.write(conn, records)
        return errors
    assert resolved.function is not None
    for row in rows:
        try:
            with conn.begin_nested():
                resolved.function(conn, row)
        except Exception as err:
            if not is_row_fault(err):  # the database's fault, not the row's: the whole batch retries
                raise
            errors.append(_item_error(row, key_columns, err))
    return errors


def _item_error(row: Mapping[str, Any], key_columns: Sequence[str], err: Exception) -> ItemError:
    error_type = getattr(err, "error_type", None) or type(err).__name__
    return ItemError(item_key(row, key_columns), error_type, error_text(err, with_class=False), sample(row))
