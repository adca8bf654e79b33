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

A payload names a handler; it never names code to import. The handlers a process
offers are loaded once, from the deployment's own configuration: the
``tidegate.handlers`` entry points and the modules listed in ``$TIDEGATE_HANDLERS``
(``tidegate worker --handlers MODULE`` adds to it). ``module:function`` must name one
of those, so ``os:system`` or ``builtins:len`` is refused before anything is imported,
with the list of what is available. The enqueue CLI and the admin API resolve through
the same registry, so they refuse what a worker would refuse.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any, ClassVar

from sqlalchemy import Connection

from tidegate.worker import kinds
from tidegate.worker.db import is_row_fault
from tidegate.worker.errors import InvalidInput
from tidegate.worker.kinds import ItemError
from tidegate.worker.redact import error_text

log = logging.getLogger(__name__)
SAMPLE_CHARS = 1000


class BadItem(ValueError):
    """Raise it (or a subclass) for an item that cannot be processed: the item goes to ``etl_errors``
    under ``error_type`` (the class name when it sets none) and the batch goes on. Any other exception
    of a row does the same under its class name."""

    error_type: ClassVar[str] = ""


class ItemHandler:
    """Subclass and set ``name``; optionally the default ``source`` and ``key``."""

    name: str = ""
    source: str | None = None
    key: str | None = None
    # the tables ``write`` writes: a job that names none holds while autovacuum works on these (its gate)
    writes: Sequence[str] = ()
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
ENTRY_POINTS = "tidegate.handlers"
MODULES_ENV = kinds.HANDLERS_ENV
LISTED = 40  # handlers named in a refusal at most
_available: dict[str, ItemHandler | RowFunction] | None = None


def register(handler: ItemHandler) -> ItemHandler:
    if not handler.name:
        raise ValueError("a handler needs a name")
    _registry[handler.name] = handler
    return handler


def registered() -> dict[str, ItemHandler]:
    """Handlers by name (``register``), once the deployment's handler modules are loaded."""
    available()
    return dict(_registry)


def configured_modules() -> list[str]:
    """The modules named in ``$TIDEGATE_HANDLERS`` (comma-separated; ``tidegate worker --handlers`` adds to it)."""
    return list(dict.fromkeys(filter(None, (n.strip() for n in os.environ.get(MODULES_ENV, "").split(",")))))


def available() -> dict[str, ItemHandler | RowFunction]:
    """Every handler a payload may name in this process, loaded once from the deployment's own configuration
    (never from a payload): the ``tidegate.handlers`` entry points and the modules of ``$TIDEGATE_HANDLERS``.

    An entry point names a module (``demo = "tidegate.jobs.demo.handlers"``) or one object (``mine =
    "pkg.mod:HANDLER"``, then named ``mine``). A loaded module offers, as ``module:name``, each public function
    defined in it and each :class:`ItemHandler` instance it holds; handlers it registers are offered by their name."""
    global _available
    if _available is not None:
        return {**_available, **_registry}
    found: dict[str, ItemHandler | RowFunction] = {}
    modules: list[ModuleType] = []
    for ep in entry_points(group=ENTRY_POINTS):
        try:
            loaded = ep.load()
        except (Exception, SystemExit):  # a broken package must not take the pool down: its handlers are missing
            log.exception("could not load handler entry point %s = %s", ep.name, ep.value)
            continue
        if isinstance(loaded, ModuleType):
            modules.append(loaded)
        elif isinstance(loaded, ItemHandler) or inspect.isfunction(loaded):
            found[ep.name] = loaded
        else:
            log.error("handler entry point %s = %s is not a module, an ItemHandler or a function", ep.name, ep.value)
    for name in configured_modules():
        if not kinds.MODULE_NAME.fullmatch(name):
            log.error("$%s: %r is not a module name", MODULES_ENV, name)
            continue
        try:
            modules.append(kinds.import_deployment_module(name))
        except (Exception, SystemExit):
            log.exception("could not load handler module %s", name)
    for module in modules:
        for attr, value in vars(module).items():
            if attr.startswith("_"):
                continue
            if isinstance(value, ItemHandler) or (inspect.isfunction(value) and value.__module__ == module.__name__):
                found[f"{module.__name__}:{attr}"] = value
    _available = found
    return {**found, **_registry}


def default_handler() -> str:
    """The deployment's default handler for payloads that name none (the runbook's INSERT)."""
    return os.environ.get("TIDEGATE_DEFAULT_HANDLER", "hero_troops")


def resolve(ref: object) -> Resolved:
    """The handler a payload names, looked up in :func:`available`: nothing is imported for a payload."""
    if not isinstance(ref, str) or not ref.strip():
        raise InvalidInput(f"handler must be a name or module:function, got {_shown(ref)}")
    ref = ref.strip()
    offered = available()
    target = offered.get(ref)
    if isinstance(target, ItemHandler):
        return Resolved(ref, handler=target)
    if target is not None:
        return Resolved(ref, function=target)
    names = sorted(offered)
    listed = ", ".join(names[:LISTED]) + (f" and {len(names) - LISTED} more" if len(names) > LISTED else "")
    if ":" not in ref:
        why = f"unknown handler {_shown(ref)}"
    elif ref.partition(":")[0] in {name.partition(":")[0] for name in names if ":" in name}:
        why = (f"handler {_shown(ref)} is not available: its module is loaded, but a handler is a public function"
               " defined there or an ItemHandler it holds")
    else:
        why = (f"handler {_shown(ref)} is not available: a payload names only handlers this deployment loaded"
               f" (entry points {ENTRY_POINTS!r}, ${MODULES_ENV}, tidegate worker --handlers)")
    raise InvalidInput(f"{why}; available: {listed or 'none'} (or sql:PATH on the CLI)")


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


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
    error_type = (err.error_type if isinstance(err, BadItem) else "") or type(err).__name__
    return ItemError(item_key(row, key_columns), error_type, error_text(err, with_class=False), sample(row))
