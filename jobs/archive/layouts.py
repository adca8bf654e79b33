"""Event-store layouts: which tables and columns hold streams, events and their archive.

A layout is a small TOML (or YAML, when PyYAML is installed) document; three ship with
tidegate (``tidegate``, ``marten``, ``rillflow`` under ``jobs/archive/layouts/``) and an
operator registers others in ``archive_layouts`` (``tidegate archive layout add FILE``:
checked, stored with its text and sha256). A payload names a layout; it never carries a
path or a document, so a worker opens no file an enqueuer chose and moves no table an
operator did not register. The CLI still reads a user's file for dry runs (``--layout
./mine.toml``) and registers it on ``--apply``::

    name = "mine"
    strategy = "move"            # move: events go to [events].archive_table
                                 # flag: events and stream get archived_flag = true
    schema = "app"               # optional: the schema of the bare table names below (--schema overrides)
    [streams]
    table = "app.streams"        # schema-qualified or on the search path
    key = "id"                   # stream id (uuid, text or integer)
    type = "type"                # optional: stream type (discover groups by it)
    tenant = "tenant_id"         # optional: --tenant
    activity = "updated_at"      # optional: --before compares it
    archived_flag = "archived"   # flag strategy (or also with move)
    # archived_value = "cold"    # with hot_value = "hot": the flag is a value, not a boolean (Rillflow's
    #                            # retention_class); needs archived_at, which then tells archived streams

    archived_at = "archived_at"  # optional audit columns, set on archive, cleared on unarchive
    archived_by = "archived_by"
    archive_reason = "archive_reason"
    filter_columns = ["type"]    # stream columns --where may name (others are event-data keys)
    [events]
    table = "app.events"
    stream = "stream_id"
    sequence = "seq"             # global order
    version = "version"          # per stream: the create event is the lowest (without it: lowest sequence)
    data = "data"                # jsonb: --where FIELD reads the create event's data->>FIELD
    archived_flag = "archived"   # flag strategy
    # archived_value = "cold"    # with hot_value = "hot": a value flag; on a table LIST-partitioned by it,
    #                            # archiving moves the rows (tidegate archive partition keeps the months)
    archive_table = "app.events_archive"   # move strategy: holds every column of events
    references = ["ParentId"]    # data keys holding other streams' ids (cross-reference check)
    [[read_models]]              # rows keyed by stream id, moved with their stream
    table = "app.stream_summary"
    key = "stream_id"
    archive_table = "app.stream_summary_archive"
    [documents]                  # projection documents keyed by stream id (Marten's mt_doc_*): kept
    tables = ["mt_doc_venue"]    # whole in tidegate's archive_documents while their stream is archived
    key = "id"

Every name is checked against the catalog (:mod:`worker.identifiers`) when a job is
planned and before any statement uses it, then quoted; a name that does not exist
is refused, whatever characters it holds. Unknown keys are refused too, so a typo
is an error rather than a silently ignored setting.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, text

from tidegate.worker import identifiers, store
from tidegate.worker.errors import InvalidIdentifier, InvalidInput, PermissionDenied, quote
from tidegate.worker.identifiers import Column, Ident
from tidegate.worker.sql import load

SHIPPED = ("tidegate", "marten", "rillflow", "rillflow_partitioned")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")  # as archive_layouts.name's CHECK; no dot, no slash
LISTED = 30
MAX_FILE = 256 * 1024
SQL = load(__package__, "layouts.sql")  # the statements on archive_layouts
STREAM_KEYS = {"table", "key", "type", "version", "tenant", "activity", "archived_flag", "archived_at",
               "archived_by", "archive_reason", "filter_columns", "archived_value", "hot_value"}
EVENT_KEYS = {"table", "stream", "sequence", "version", "type", "data", "archived_flag", "archive_table",
              "references", "archived_value", "hot_value"}
# a flag that is a value (retention_class = 'cold'): the value names partitions (events_cold_2025_01) too
FLAG_VALUE = re.compile(r"[a-z][a-z0-9_]{0,15}")
BOOLEAN = ("true", "false")  # a boolean flag's (archived, hot) values
READ_MODEL_KEYS = {"table", "key", "archive_table"}
DOCUMENT_KEYS = {"tables", "key"}


def shipped(name: str) -> dict[str, Any]:
    import tomllib  # at first use: every pool loads this module with the job kinds, few read a layout

    return tomllib.loads(resources.files(__package__).joinpath("layouts", f"{name}.toml").read_text())


def named(conn: Connection, ref: Any) -> dict[str, Any]:
    """The layout a payload names: a shipped one or one registered in ``archive_layouts``. A payload
    carries a name, never a path or a document, and nothing is opened but the shipped files."""
    if not isinstance(ref, str) or not NAME.fullmatch(ref):
        what = "a document" if isinstance(ref, dict) else f"{_shown(ref)}, not a layout name"
        raise InvalidInput(f"layout is {what}: a payload names a shipped layout ({', '.join(SHIPPED)}) or one an"
                           " operator registered (tidegate archive layout add FILE); a worker opens no file")
    if ref in SHIPPED:
        spec = shipped(ref)
    else:
        found = conn.execute(text(SQL["get"]), {"name": ref}).scalar()
        if found is None:
            names = list(conn.execute(text(SQL["names"]), {"limit": LISTED}).scalars())
            raise InvalidInput(f"layout {ref!r} is not a shipped layout ({', '.join(SHIPPED)}) nor a registered"
                               f" one ({', '.join(names) or 'none registered'}); an operator registers a file"
                               " with: tidegate archive layout add FILE")
        spec = copy.deepcopy(found)
    check_spec(spec)
    spec["name"] = ref
    return spec


@dataclass(frozen=True)
class LayoutFile:
    """A layout file the CLI's user gave (their own file, read by their own command)."""

    name: str
    format: str
    body: str
    sha256: str
    spec: dict[str, Any]


def read_file(ref: str) -> LayoutFile:
    """The user's own file (their command, their permissions): a small regular file, so a device or a FIFO
    given by mistake is refused rather than read for ever."""
    path = Path(ref)
    try:
        with open(path, "rb", opener=_nonblocking) as f:  # Path.open takes no opener
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise InvalidInput(f"layout {_shown(ref)}: not a regular file")
            if info.st_size > MAX_FILE:
                raise InvalidInput(f"layout {_shown(ref)}: larger than {MAX_FILE // 1024} KiB")
            body = f.read(MAX_FILE + 1).decode()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise InvalidInput(f"layout {_shown(ref)}: not a shipped layout ({', '.join(SHIPPED)}), a registered name,"
                           f" nor a readable file ({reason})") from None
    spec = _parse(path, body)
    check_spec(spec)
    name = spec.get("name") or path.stem
    if not NAME.fullmatch(name):
        raise InvalidInput(f"layout {path}: name {_shown(name)} must be letters, digits, _ or - (at most 63)")
    spec["name"] = name
    fmt = "yaml" if path.suffix in (".yml", ".yaml") else "toml"
    return LayoutFile(name, fmt, body, hashlib.sha256(body.encode()).hexdigest(), spec)


def for_cli(conn: Connection, ref: str, schema: str | None = None) -> tuple[dict[str, Any], LayoutFile | None]:
    """A command's --layout: a name (shipped or registered), else the path of the user's own file; with
    its --schema (:func:`with_schema`; the registered file keeps its own text)."""
    if NAME.fullmatch(ref):
        return with_schema(named(conn, ref), schema), None
    found = read_file(ref)
    return with_schema(found.spec, schema), found


def register(conn: Connection, found: LayoutFile, actor: str, *, replace: bool = False) -> str:
    """Store a checked layout under its name; returns added, replaced or unchanged. A different text under
    a registered name needs ``replace`` (jobs already planned keep the layout they were planned with)."""
    if found.name in SHIPPED:
        raise InvalidInput(f"layout name {found.name!r} is a shipped layout's: give yours another name")
    resolve(conn, found.spec)  # every name against the catalog, as a job's planning will
    have = conn.execute(text(SQL["get_sha"]), {"name": found.name}).scalar()
    if have == found.sha256:
        return "unchanged"
    if have is not None and not replace:
        raise InvalidInput(f"layout {found.name!r} is registered with other text (sha256 {have[:12]}...);"
                           " replace it with: tidegate archive layout add --replace FILE")
    if not conn.execute(text(SQL["can_add"])).scalar():
        raise PermissionDenied(f"layout {found.name!r} is not registered and this login may not register layouts:"
                               " an operator runs tidegate archive layout add FILE")
    conn.execute(text(SQL["upsert"]), {"name": found.name, "format": found.format, "body": found.body,
                                       "sha256": found.sha256, "spec": json.dumps(found.spec)})
    done = "replaced" if have is not None else "added"
    store.audit(conn, actor, "layout_" + ("replace" if have is not None else "add"), None,
                {"layout": found.name, "sha256": found.sha256, "previous_sha256": have})
    return done


def listing(conn: Connection) -> list[dict[str, Any]]:
    """The shipped layouts and the registered ones."""
    rows = [{"name": n, "source": "shipped", "strategy": shipped(n)["strategy"], "sha256": None, "added_by": None,
             "added_at": None} for n in SHIPPED]
    return rows + [dict(r._mapping) for r in conn.execute(text(SQL["list"]))]


def _nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK)  # opening a FIFO does not wait for a writer


def _parse(path: Path, source: str) -> dict[str, Any]:
    import tomllib

    try:
        if path.suffix in (".yml", ".yaml"):
            try:
                import yaml  # optional: TOML needs nothing beyond the standard library
            except ImportError:
                raise InvalidInput("YAML layouts need PyYAML (pip install pyyaml); or write it in TOML") from None
            spec = yaml.safe_load(source)
        else:
            spec = tomllib.loads(source)
    except (tomllib.TOMLDecodeError, ValueError) as err:
        raise InvalidInput(f"layout {quote(str(path))}: {err}") from None
    except Exception as err:  # yaml.YAMLError, without importing yaml for its type
        raise InvalidInput(f"layout {quote(str(path))}: {type(err).__name__}: {err}") from None
    if not isinstance(spec, dict):
        raise InvalidInput(f"layout {quote(str(path))}: expected a table of settings")
    return spec


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_spec(spec: dict[str, Any]) -> None:
    """Shape checks that need no database: known keys, strings where names go."""
    unknown = sorted(set(spec) - {"name", "strategy", "schema", "streams", "events", "read_models", "documents"})
    if unknown:
        raise InvalidInput(f"layout: unknown key(s) {', '.join(unknown)}")
    if "schema" in spec and (not isinstance(spec["schema"], str) or not spec["schema"]):
        raise InvalidInput(f"layout: schema must be a schema name, got {quote(spec['schema'])}")
    docs = spec.get("documents")
    if docs is not None:
        if not isinstance(docs, dict) or set(docs) - DOCUMENT_KEYS or "tables" not in docs:
            raise InvalidInput("layout: [documents] takes tables (a list of document tables) and key (default id)")
        tables = docs["tables"]
        if not isinstance(tables, list) or not all(isinstance(t, str) and t for t in tables):
            raise InvalidInput("layout [documents].tables: expected a list of names")
        if not isinstance(docs.get("key", "id"), str) or not docs.get("key", "id"):
            raise InvalidInput(f"layout [documents].key: expected a name, got {quote(docs.get('key'))}")
    if spec.get("strategy") not in ("move", "flag"):
        raise InvalidInput(f"layout: strategy must be 'move' or 'flag', got {quote(spec.get('strategy'))}")
    if not isinstance(spec.get("name", "custom"), str):
        raise InvalidInput("layout: name must be a string")
    for section, known, required in (("streams", STREAM_KEYS, ("table", "key")),
                                     ("events", EVENT_KEYS, ("table", "stream", "sequence"))):
        part = spec.get(section)
        if not isinstance(part, dict):
            raise InvalidInput(f"layout: missing [{section}] table")
        bad = sorted(set(part) - known)
        if bad:
            raise InvalidInput(f"layout [{section}]: unknown key(s) {', '.join(bad)};"
                               f" known: {', '.join(sorted(known))}")
        for key in required:
            if key not in part:
                raise InvalidInput(f"layout [{section}]: {quote(key)} is required")
        for key, value in part.items():
            if key in ("filter_columns", "references"):
                if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                    raise InvalidInput(f"layout [{section}].{key}: expected a list of names")
            elif not isinstance(value, str) or not value:
                raise InvalidInput(f"layout [{section}].{key}: expected a name, got {quote(value)}")
    models = spec.get("read_models", [])
    if not isinstance(models, list) or not all(isinstance(m, dict) and set(m) == READ_MODEL_KEYS
                                               and all(isinstance(v, str) and v for v in m.values())
                                               for m in models):
        raise InvalidInput("layout: each [[read_models]] needs exactly table, key and archive_table names")
    streams, events = spec["streams"], spec["events"]
    if spec["strategy"] == "move" and "archive_table" not in events:
        raise InvalidInput("layout: strategy 'move' needs [events].archive_table")
    if spec["strategy"] == "flag" and ("archived_flag" not in events or "archived_flag" not in streams):
        raise InvalidInput("layout: strategy 'flag' needs archived_flag in [streams] and [events]")
    if "archived_flag" not in streams and "archived_at" not in streams:
        raise InvalidInput("layout: [streams] needs archived_flag or archived_at to mark archived streams")
    for section, part in (("streams", streams), ("events", events)):
        _check_flag_values(section, part)
    if "archived_value" in streams and "archived_at" not in streams:
        raise InvalidInput("layout: a [streams] archived_flag with values needs archived_at: it tells archived"
                           " streams apart (the value column is set and cleared with it)")


def _check_flag_values(section: str, part: dict[str, Any]) -> None:
    """``archived_value``/``hot_value``: the flag is a value, e.g. retention_class 'cold' / 'hot'."""
    given = [k for k in ("archived_value", "hot_value") if k in part]
    if not given:
        return
    if len(given) != 2 or "archived_flag" not in part:
        raise InvalidInput(f"layout [{section}]: archived_value and hot_value go together, with archived_flag")
    for key in given:
        if not FLAG_VALUE.fullmatch(part[key]):
            raise InvalidInput(f"layout [{section}].{key}: {_shown(part[key])} must be a lower-case word"
                               " (a-z, 0-9, _; at most 16): it names partitions too")
    if part["archived_value"] == part["hot_value"]:
        raise InvalidInput(f"layout [{section}]: archived_value and hot_value must differ")


@dataclass(frozen=True)
class ReadModel:
    table: Ident
    key: Column
    archive: Ident
    columns: Ident


@dataclass(frozen=True)
class Document:
    """A projection document table (Marten's mt_doc_*) keyed by stream id: its rows are kept in
    tidegate's archive_documents while their stream is archived, as whole rows (jsonb)."""

    table: Ident
    key: Column
    columns: Ident


@dataclass(frozen=True)
class Layout:
    """A layout whose every name exists in the catalog, quoted."""

    name: str
    strategy: str
    streams: Ident
    key: Column
    stream_cols: dict[str, Column]  # type, version, tenant, activity, archived_* present in the layout
    filter_columns: dict[str, Column]
    events: Ident
    event_stream: Column
    sequence: Column
    event_cols: dict[str, Column]  # version, type, data, archived_flag
    archive: Ident | None
    event_columns: Ident  # every column of events, for INSERT ... SELECT of whole rows
    references: list[str]
    read_models: list[ReadModel]
    documents: list[Document]
    # (archived, hot) values of the events' and the streams' archived_flag: BOOLEAN, or e.g. ("cold", "hot")
    event_flag_values: tuple[str, str] = BOOLEAN
    stream_flag_values: tuple[str, str] = BOOLEAN

    def col(self, name: str) -> Column | None:
        return self.stream_cols.get(name)

    @property
    def flag(self) -> bool:
        return self.strategy == "flag"

    @property
    def stream_flag_is_value(self) -> bool:
        """The streams' flag holds a value (retention_class): archived_at tells archived streams apart."""
        return self.stream_flag_values != BOOLEAN


def resolve(conn: Connection, spec: dict[str, Any]) -> Layout:
    """Every name of the layout against the catalog. Its ``schema`` (the layout file's key, or the one a
    command's --schema or a payload's ``schema`` put there at planning) qualifies the layout's bare table
    names, and nothing else: a name the layout qualifies itself stays where it says, and the schema picks
    no table the layout does not name."""
    s, e = spec["streams"], spec["events"]
    in_schema = None
    if spec.get("schema") is not None:
        in_schema = identifiers.schema(conn, spec["schema"], what="layout schema")
        if not any("." not in name for name in table_names(spec)):
            raise InvalidInput(f"schema {quote(spec['schema'])}: every table of layout {quote(spec.get('name'))}"
                               " is already schema-qualified; --schema applies to a layout's bare table names")

    def table(name: str, what: str) -> Ident:
        try:
            return identifiers.table(conn, name, what=what, in_schema=in_schema)
        except InvalidIdentifier as err:
            if in_schema is None and "." not in name:  # the shipped layouts name bare tables
                raise InvalidIdentifier(f"{err}; if the store lives in a schema not on the search path, give"
                                        " --schema NAME (or the layout's schema key)") from None
            raise

    streams = table(s["table"], "layout streams table")
    events = table(e["table"], "layout events table")
    stream_cols = {k: identifiers.column(conn, streams, s[k], what=f"layout streams.{k} column")
                   for k in ("type", "version", "tenant", "activity", "archived_flag", "archived_at",
                             "archived_by", "archive_reason") if k in s}
    filters = {name: identifiers.column(conn, streams, name, what="layout filter column")
               for name in s.get("filter_columns", [])}
    event_cols = {k: identifiers.column(conn, events, e[k], what=f"layout events.{k} column")
                  for k in ("version", "type", "data", "archived_flag") if k in e}
    all_event_cols = identifiers.columns(conn, events)
    archive = None
    if spec["strategy"] == "move":
        archive = table(e["archive_table"], "layout events archive table")
        _same_columns(conn, all_event_cols, archive, "events archive table")
    models = []
    for m in spec.get("read_models", []):
        model = table(m["table"], "layout read-model table")
        cols = identifiers.columns(conn, model)
        model_archive = table(m["archive_table"], "layout read-model archive table")
        _same_columns(conn, cols, model_archive, "read-model archive table")
        models.append(ReadModel(model, identifiers.column(conn, model, m["key"], what="layout read-model key"),
                                model_archive, identifiers.column_list(cols)))
    docs = spec.get("documents") or {"tables": []}
    documents = []
    for name in docs["tables"]:
        doc = table(name, "layout document table")
        documents.append(Document(doc, identifiers.column(conn, doc, docs.get("key", "id"),
                                                          what="layout document key"),
                                  identifiers.column_list(identifiers.columns(conn, doc))))
    for ref in e.get("references", []):
        if "data" not in event_cols:
            raise InvalidInput("layout: [events].references needs [events].data")
        if len(ref) > 200:
            raise InvalidInput(f"layout: reference key {quote(ref[:40])}... is too long")
    return Layout(
        name=str(spec.get("name", "custom")), strategy=spec["strategy"], streams=streams,
        key=identifiers.column(conn, streams, s["key"], what="layout streams.key column"), stream_cols=stream_cols,
        filter_columns=filters, events=events,
        event_stream=identifiers.column(conn, events, e["stream"], what="layout events.stream column"),
        sequence=identifiers.column(conn, events, e["sequence"], what="layout events.sequence column"),
        event_cols=event_cols, archive=archive, event_columns=identifiers.column_list(all_event_cols),
        references=list(e.get("references", [])), read_models=models, documents=documents,
        event_flag_values=_values(e), stream_flag_values=_values(s),
    )


def _values(part: dict[str, Any]) -> tuple[str, str]:
    return (part["archived_value"], part["hot_value"]) if "archived_value" in part else BOOLEAN


def table_names(spec: dict[str, Any]) -> list[str]:
    """Every table name a layout document holds."""
    e = spec["events"]
    return [spec["streams"]["table"], e["table"], *([e["archive_table"]] if "archive_table" in e else []),
            *[t for m in spec.get("read_models", []) for t in (m["table"], m["archive_table"])],
            *(spec.get("documents") or {}).get("tables", [])]


def with_schema(spec: dict[str, Any], schema: str | None) -> dict[str, Any]:
    """The layout document with its tables' schema set to ``schema`` (a command's --schema, a payload's
    ``schema``), a copy; unchanged without one. :func:`resolve` checks it."""
    if schema is None:
        return spec
    return {**copy.deepcopy(spec), "schema": schema}


def _same_columns(conn: Connection, cols: list[Column], archive: Ident, what: str) -> None:
    have = {c.ident.name for c in identifiers.columns(conn, archive)}
    missing = [c.ident.name for c in cols if c.ident.name not in have]
    if missing:
        raise InvalidIdentifier(f"{what} {quote(archive.name)} lacks column(s) {', '.join(missing)}")
