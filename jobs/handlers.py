"""Python handlers for backfill-range, registered by name.

Two forms:

* an :class:`ItemHandler` (the fast path): ``transform(row)`` turns one source
  row into output records in Python — raising for a bad item, which goes to
  ``etl_errors`` while the batch goes on — and ``write(conn, records)`` writes
  the whole batch's records set-based (an upsert, so reprocessing is
  idempotent). A handler that declares its ``table`` and ``columns`` gets
  ``write`` built in: the batch's records are COPYed into a temporary table and
  upserted from it in one statement. When that statement fails for a record's
  data (worker/db.py ``is_row_fault``), the batch's rows are written again one
  by one, each in a SAVEPOINT: the bad ones go to ``etl_errors``, the others
  are written; any other error is the batch's (rolled back and retried);
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
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from types import ModuleType
from typing import Any, ClassVar

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import set_json_loads
from sqlalchemy import Connection, Engine, TextClause, event

try:  # about 2.5x faster than json.loads on the source's JSON documents (a Python handler's largest client cost)
    import orjson
except ImportError:  # pragma: no cover - a dependency; without it the rows are read with json.loads
    orjson = None  # type: ignore[assignment]

from tidegate.worker import identifiers, kinds
from tidegate.worker.db import is_row_fault, sqlstate
from tidegate.worker.errors import InvalidInput
from tidegate.worker.kinds import ItemError
from tidegate.worker.redact import error_text
from tidegate.worker.sql import Fragment, compose, load, render

SQL = load(__package__, "handlers.sql")  # the built-in bulk write, by name

log = logging.getLogger(__name__)
SAMPLE_CHARS = 1000


class BadItem(ValueError):
    """Raise it (or a subclass) for an item that cannot be processed: the item goes to ``etl_errors``
    under ``error_type`` (the class name when it sets none) and the batch goes on. Any other exception
    of a row does the same under its class name."""

    error_type: ClassVar[str] = ""


class ItemHandler:
    """Subclass and set ``name``; optionally the default ``source`` and ``key``.

    The built-in ``write`` (the bulk path): set ``table`` and ``columns``, and have ``transform`` return
    tuples in ``columns`` order. Each batch's records are COPYed into a temporary table, then written in one
    statement: an upsert on ``conflict`` (the table's unique key; one row per key, the record with the
    greatest ``newer_by`` values winning, in the batch and over the row already there; without ``newer_by``
    the last record written wins), or a plain INSERT when ``conflict`` is empty. Override ``write`` for
    anything else (an UPDATE, several tables, an optimistic check)."""

    name: str = ""
    source: str | None = None
    key: str | None = None
    # the tables ``write`` writes: a job that names none holds while autovacuum works on these (its gate);
    # ``table`` when not set
    writes: Sequence[str] = ()
    # for `tidegate verify`: the derived table and its unique key, e.g.
    # {"table": "user_troops", "key": ["user_id", "troop_id"]}; check_row recomputes one source row
    derived: dict[str, Any] | None = None
    # the built-in bulk write (see above)
    table: str | None = None
    columns: Sequence[str] = ()
    conflict: Sequence[str] = ()
    newer_by: Sequence[str] = ()  # NOT NULL columns: a row updates only to a newer record

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.table and not cls.writes:
            cls.writes = (cls.table,)

    def transform(self, row: Mapping[str, Any]) -> Iterable[Any]:
        raise NotImplementedError

    def write(self, conn: Connection, records: list[Any]) -> None:
        """The batch's records, written in one statement (the bulk path: ``table`` and ``columns``)."""
        if not self.table or not self.columns:
            raise NotImplementedError(f"handler {self.name!r}: set table and columns, or override write")
        bulk_write(conn, self, records)

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
_available_for: tuple[str, ...] = ()  # the $TIDEGATE_HANDLERS modules _available was loaded for


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
    global _available, _available_for
    wanted = tuple(configured_modules())
    if _available is not None and _available_for == wanted:  # loaded already, for the same $TIDEGATE_HANDLERS
        return {**_available, **_registry}
    found: dict[str, ItemHandler | RowFunction] = {}
    modules: list[ModuleType] = []
    for ep in kinds.entry_points(ENTRY_POINTS):  # read once per process (worker/kinds.py)
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
    _available, _available_for = found, wanted
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


def _loads(data: bytes) -> Any:
    """JSON as ``json.loads`` reads it, by orjson when it can: what orjson refuses (1e400, a lone surrogate,
    nesting past its limit) and any run of 19 digits (orjson reads an integer past 64 bits as a float) are
    read by ``json.loads``, so a document reads the same either way (tests/test_bulk_write.py)."""
    if _LONG_NUMBER not in data.translate(_DIGITS_AS_NINES):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


# 19 digits in a row (in a number or a string): maybe past 64 bits. Found by mapping every digit to 9 and
# searching for nineteen 9s: two passes in C, 7x less CPU than a regular expression over the same document
# (whose scan was a quarter of the JSON's read time on the demo's snapshots)
_DIGITS_AS_NINES = bytes.maketrans(b"012345678", b"999999999")
_LONG_NUMBER = b"9" * 19


_fast_json: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()


def fetch_rows(conn: Connection, statement: TextClause, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A batch's source rows for a handler, as dicts: taken from psycopg's cursor, not through SQLAlchemy's
    Row and RowMapping (a third of the read's client time), JSON parsed by orjson when installed
    (``_loads``; the connection keeps it for the JSON columns it reads later: the same values)."""
    return _fetch(conn, statement, params, raw_json=False).rows


@dataclass
class RawRows:
    """Rows read with their JSON columns' values left as the server's text (bytes; nested lists of them in
    an array of JSON): ``parsed`` reads them later, so a read ahead is parsed while the server is busy."""

    rows: list[dict[str, Any]]
    json_columns: list[tuple[str, bool]]  # (name, is an array of JSON)

    def parsed(self) -> list[dict[str, Any]]:
        """The rows as ``fetch_rows`` would have read them: the same loads (``_loads``), so the same values."""
        loads = _json_loads()
        for name, array in self.json_columns:
            for row in self.rows:
                value = row[name]
                if value is not None:
                    row[name] = _parse_array(value, loads) if array else loads(value)
        self.json_columns = []
        return self.rows


def fetch_raw(conn: Connection, statement: TextClause, params: Mapping[str, Any]) -> RawRows:
    """``fetch_rows`` without parsing JSON (``RawRows``)."""
    return _fetch(conn, statement, params, raw_json=True)


JSON_TYPES = {114, 3802}  # json, jsonb
JSON_ARRAYS = {199, 3807}  # json[], jsonb[]


def _fetch(conn: Connection, statement: TextClause, params: Mapping[str, Any], raw_json: bool) -> RawRows:
    driver = conn.connection.driver_connection
    fast = isinstance(driver, psycopg.Connection)
    if fast and driver not in _fast_json:
        set_json_loads(_json_loads(), driver)
        _fast_json.add(driver)
    if fast and raw_json:  # JSON left as text by this statement's own cursor; the connection's other reads parse it
        if conn.engine not in _raw_json_engines:
            event.listen(conn.engine, "before_cursor_execute", _raw_json_cursor)
            _raw_json_engines.add(conn.engine)
        statement = statement.execution_options(**{RAW_JSON: True})
    result = conn.execute(statement, params)
    try:
        cursor = result.cursor
        if not isinstance(cursor, psycopg.Cursor):  # pragma: no cover - another driver: SQLAlchemy's mappings
            return RawRows([dict(m) for m in result.mappings()], [])
        cursor.row_factory = dict_row
        rows = cursor.fetchall()
        json_columns = [(d.name, d.type_code in JSON_ARRAYS) for d in cursor.description or ()
                        if d.type_code in JSON_TYPES or d.type_code in JSON_ARRAYS] if raw_json else []
        return RawRows(rows, json_columns)
    finally:
        result.close()


RAW_JSON = "tidegate_raw_json"  # the execution option of a read whose JSON values stay text (fetch_raw)
_raw_json_engines: weakref.WeakSet[Engine] = weakref.WeakSet()  # engines with _raw_json_cursor as a hook


def _raw_json_cursor(conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any,
                     executemany: bool) -> None:
    """SQLAlchemy's hook before a statement runs on its cursor: a raw read's cursor loads JSON as bytes."""
    if context is not None and context.execution_options.get(RAW_JSON) and isinstance(cursor, psycopg.Cursor):
        set_json_loads(bytes, cursor)


def _json_loads() -> Callable[[bytes], Any]:
    return _loads if orjson is not None else json.loads


def _parse_array(value: Any, loads: Callable[[bytes], Any]) -> Any:
    if isinstance(value, list):
        return [_parse_array(v, loads) for v in value]
    return None if value is None else loads(value)


def item_key(row: Mapping[str, Any], key_columns: Sequence[str]) -> str:
    return ",".join(str(row[c]) for c in key_columns)


def sample(row: Mapping[str, Any]) -> str:
    text = json.dumps(dict(row), default=str)
    return text if len(text) <= SAMPLE_CHARS else text[: SAMPLE_CHARS - 1] + "…"


@dataclass
class Prepared:
    """An ItemHandler's batch before its write (``prepare``): its rows, their records, each row's span of
    ``records``, and the rows whose transform failed (items)."""

    rows: Sequence[Mapping[str, Any]]
    records: list[Any] = field(default_factory=list)
    per_row: list[tuple[Mapping[str, Any], int, int]] = field(default_factory=list)
    errors: list[ItemError] = field(default_factory=list)


def prepare(handler: ItemHandler, rows: Sequence[Mapping[str, Any]], key_columns: Sequence[str]) -> Prepared:
    """Each row through ``handler.transform``; a row that raises is an item that failed, the rest go on."""
    out = Prepared(rows)
    records = out.records
    for row in rows:
        start = len(records)
        try:
            records.extend(handler.transform(row))
        except Exception as err:  # a bad item is recorded, the batch goes on
            if isinstance(err, MemoryError):
                raise
            del records[start:]
            out.errors.append(_item_error(row, key_columns, err))
            continue
        if len(records) > start:
            out.per_row.append((row, start, len(records)))
    return out


def overlaps(resolved: Resolved) -> bool:
    """Whether ``run`` gives the handler's ``beside`` work the time of the write's last round trip: the
    built-in bulk write's."""
    handler = resolved.handler
    return (handler is not None and type(handler).write is ItemHandler.write and bool(handler.table)
            and bool(handler.columns))


def run(conn: Connection, resolved: Resolved, rows: Sequence[Mapping[str, Any]] | Prepared,
        key_columns: Sequence[str], beside: Callable[[], None] | None = None) -> list[ItemError]:
    """Run a handler over one batch's rows (or an ItemHandler's batch already ``prepare``d); returns the
    items that failed. ``beside``: client work (no use of ``conn``) done while the built-in write's last
    statement runs on the server (``overlaps``); it is called at most once, and must not raise."""
    handler = resolved.handler
    if handler is not None:
        prepared = rows if isinstance(rows, Prepared) else prepare(handler, rows, key_columns)
        errors, records, per_row = list(prepared.errors), prepared.records, prepared.per_row
        if not records:
            return errors
        if not overlaps(resolved):
            handler.write(conn, records)  # the handler's own write: what it raises is the batch's
            return errors
        _statements(conn, handler)  # a table or column that is not there fails the batch, not its rows
        try:  # in a savepoint of its own, set and released in the write's first and last round trips
            bulk_write(conn, handler, records, savepoint=SAVEPOINT, beside=beside)
        except Exception as err:
            if not _record_fault(err):  # the database's fault, not a record's: the whole batch retries
                raise
            _execute(conn, [f"ROLLBACK TO SAVEPOINT {SAVEPOINT}", f"RELEASE SAVEPOINT {SAVEPOINT}"])
            log.info("handler %s: the batch's write failed for a record's data (%s); writing its rows one by one",
                     handler.name, error_text(err, 200))
            # each row's records alone, in text COPY: the bad rows are items, the rest written
            errors += _one_by_one(conn, ((row, partial(bulk_write, conn, handler, records[start:end], binary=False))
                                         for row, start, end in per_row), key_columns, _record_fault, server_class=True)
        return errors
    assert not isinstance(rows, Prepared)
    function = resolved.function
    assert function is not None
    return _one_by_one(conn, ((row, partial(function, conn, row)) for row in rows), key_columns, is_row_fault)


def _one_by_one(conn: Connection, items: Iterable[tuple[Mapping[str, Any], Callable[[], None]]],
                key_columns: Sequence[str], fault: Callable[[BaseException], bool],
                server_class: bool = False) -> list[ItemError]:
    """Run each row's write in its own SAVEPOINT; the rows whose write fails by ``fault`` are the items that
    failed. Any other error is raised: the database's fault, not the row's, so the whole batch retries.
    ``server_class``: file a database error under the server's class (NumericValueOutOfRange), not under
    SQLAlchemy's wrapper around it."""
    errors: list[ItemError] = []
    for row, write in items:
        try:
            with conn.begin_nested():
                write()
        except Exception as err:
            if not fault(err):
                raise
            orig = getattr(err, "orig", None) if server_class else None
            errors.append(_item_error(row, key_columns, orig if isinstance(orig, Exception) else err))
    return errors


def _item_error(row: Mapping[str, Any], key_columns: Sequence[str], err: Exception) -> ItemError:
    error_type = (err.error_type if isinstance(err, BadItem) else "") or type(err).__name__
    return ItemError(item_key(row, key_columns), error_type, error_text(err, with_class=False), sample(row))


# -- the built-in bulk write -------------------------------------------------------------------------


def _record_fault(err: BaseException) -> bool:
    """A failure of the bulk write that a record's values caused: what ``is_row_fault`` calls a row's
    (a data, constraint or check error of the server, a Python exception), or a value psycopg could not
    send (a ProgrammingError or DataError with no SQLSTATE: it never left the client)."""
    if isinstance(err, psycopg.ProgrammingError | psycopg.DataError) and sqlstate(err) is None:
        return True
    return is_row_fault(err)


@dataclass(frozen=True)
class _Bulk:
    create: TextClause
    copy: str  # text format: the server parses each value (a str for a timestamp column is fine)
    write: TextClause
    drop: str
    binary: str  # binary format, with the columns' types: about 6x less client CPU than text
    types: list[int] | None  # the columns' type OIDs; None when psycopg cannot dump one in binary


_bulk_cache: weakref.WeakKeyDictionary[ItemHandler, dict[str, _Bulk]] = weakref.WeakKeyDictionary()
# Column types the bulk write sends in binary: psycopg's binary dumpers for these either write the value
# as it is or raise (a float for a bigint, a naive datetime for a timestamptz...), and a raise sends that
# batch's rows again one by one in text, where the server parses them. Checked by tests/test_bulk_write.py.
BINARY_SAFE = {16, 20, 25, 701, 1043, 1082, 1114, 1184, 1700, 2950}  # bool int8 text float8 varchar date
#                                                                     timestamp timestamptz numeric uuid
BINARY_AS = {21: 20, 23: 20}  # int2, int4: sent as int8 (see _statements)


def _statements(conn: Connection, handler: ItemHandler) -> _Bulk:
    """The handler's bulk statements, its names checked in the catalog once per database (then cached)."""
    database = conn.engine.url.render_as_string(hide_password=True)
    found = _bulk_cache.get(handler, {}).get(database)
    if found is not None:
        return found
    table = identifiers.table(conn, handler.table, what="handler table")
    names = list(dict.fromkeys([*handler.columns, *handler.conflict, *handler.newer_by]))
    if len(names) != len(handler.columns) or len(set(handler.columns)) != len(handler.columns):
        raise InvalidInput(f"handler {handler.name!r}: columns must be distinct and include every conflict"
                           " and newer_by column")
    idents = {f"c{i}": identifiers.column(conn, table, c, what="handler column").ident
              for i, c in enumerate(handler.columns)}
    slot = {c: f"{{c{i}}}" for i, c in enumerate(handler.columns)}  # a column's placeholder, filled by render
    cols = Fragment(", ".join(slot.values()))
    keys = Fragment(", ".join(slot[c] for c in handler.conflict))
    if not handler.conflict:
        write = render(SQL["bulk_insert"], cols=cols, table=table, **idents)
    else:
        order = Fragment("".join(f", {slot[c]} DESC NULLS LAST" for c in handler.newer_by))
        updated = [c for c in handler.columns if c not in handler.conflict]
        sets = Fragment(", ".join(f"{slot[c]} = EXCLUDED.{slot[c]}" for c in updated))
        if not updated:
            action = Fragment("NOTHING")
        elif not handler.newer_by:
            action = compose(SQL["bulk_update"], sets=sets)
        else:
            action = compose(SQL["bulk_update_newer"], sets=sets,
                             mine=Fragment(", ".join(f"t.{slot[c]}" for c in handler.newer_by)),
                             theirs=Fragment(", ".join(f"EXCLUDED.{slot[c]}" for c in handler.newer_by)))
        write = render(SQL["bulk_upsert"], cols=cols, keys=keys, order=order, action=action, table=table,
                       **idents)
    described = conn.execute(render(SQL["bulk_types"], cols=cols, table=table, **idents)).cursor.description
    oids = [int(d.type_code) for d in described]
    types: list[int] | None = [BINARY_AS.get(oid, oid) for oid in oids]
    if not set(oids) <= set(BINARY_AS) | BINARY_SAFE:
        types = None  # a type without a checked binary dumper: the text COPY, the server parses every value
    # int2/int4 columns are bigint in the write's own table: psycopg's binary int2/int4 dumpers wrap a value
    # out of range silently (2**31 becomes -2**31); as bigint it arrives whole and the INSERT's cast to the
    # column's type refuses it (22003, the record's data error)
    copied = Fragment(", ".join(f"CAST({slot[c]} AS bigint) AS {slot[c]}" if types and oid in BINARY_AS else slot[c]
                                for c, oid in zip(handler.columns, oids, strict=True)))
    built = _Bulk(render(SQL["bulk_table"], cols=copied, table=table, **idents), SQL["bulk_copy"], write,
                  SQL["bulk_drop"], SQL["bulk_copy_binary"], types)
    _bulk_cache.setdefault(handler, {})[database] = built
    return built


SAVEPOINT = "tidegate_bulk_write"  # the built-in write's own savepoint (run); a fixed name, never input


def _execute(conn: Connection, statements: Sequence[str]) -> None:
    """Statements without parameters in one round trip when psycopg prepares none (tidegate's engines:
    ``prepare_threshold=None``); else one by one (a prepared statement holds one command)."""
    driver = conn.connection.driver_connection
    together = isinstance(driver, psycopg.Connection) and driver.prepare_threshold is None
    statements = [sql.strip().rstrip(";") for sql in statements]
    for sql in ["; ".join(statements)] if together else statements:
        conn.exec_driver_sql(sql.replace("%", "%%"))  # the driver's paramstyle: a % in a quoted name is %%


def bulk_write(conn: Connection, handler: ItemHandler, records: Sequence[Sequence[Any]], binary: bool = True,
               savepoint: str | None = None, beside: Callable[[], None] | None = None) -> None:
    """Write ``records`` (tuples in ``handler.columns`` order) with the handler's bulk statements: COPY into
    a temporary table, one INSERT ... SELECT (an upsert on ``conflict``) from it, the table dropped.

    ``binary``: COPY in binary when psycopg can dump every column's type so; a value of another Python
    type than the column's (a str for a timestamp) then fails on the client, and the caller's per-row
    pass (``binary=False``, text: the server parses it) writes it.

    Three round trips besides the COPY's data: the table made (after ``SAVEPOINT savepoint``), the COPY, then
    the INSERT, the DROP (and ``RELEASE SAVEPOINT``) together. Under load each round trip costs a wake-up of
    the worker and of its server process: at 2,000 rows a batch they were half of a Python batch's time.

    ``beside``: client work done while the INSERT runs on the server (see ``alongside``)."""
    bulk = _statements(conn, handler)
    head, tail = [bulk.create.text], [bulk.write.text, bulk.drop]
    if savepoint:
        head, tail = [f"SAVEPOINT {savepoint}", *head], [*tail, f"RELEASE SAVEPOINT {savepoint}"]
    _execute(conn, head)
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    with cursor.copy(bulk.binary if binary and bulk.types else bulk.copy) as copy:
        if binary and bulk.types:
            copy.set_types(bulk.types)
        write_row = copy.write_row
        for record in records:
            write_row(record)
    if beside is None:
        _execute(conn, tail)
    else:
        alongside(partial(_execute, conn, tail), beside)


def alongside(server: Callable[[], None], client: Callable[[], None]) -> None:
    """``server`` (statements: waiting on the database, the GIL released) in a thread of its own while
    ``client`` (Python work that does not touch the connection) runs here; returns when both are done, and
    raises what ``server`` raised. The connection is the thread's alone until it ends: nothing here uses it."""
    failed: list[BaseException] = []

    def send() -> None:
        try:
            server()
        except BaseException as err:  # handed to the batch's thread below
            failed.append(err)

    thread = threading.Thread(target=send, name="tidegate-write", daemon=True)
    thread.start()
    try:
        client()
    finally:
        thread.join()
    if failed:
        raise failed[0]
