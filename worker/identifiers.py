"""The one way a user-supplied table or column name reaches SQL.

A name is looked up in the catalog with bound parameters (never parsed by
the server), must exist exactly as written, and is then quoted. Only this
module builds :class:`Ident` values; :func:`worker.sql.render` accepts nothing
else. Its lookups are the ``catalog_*`` queries of worker/sql/queries.sql: with
worker/store.py, this module is the query boundary (worker/sql/__init__.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import Connection

from tidegate.worker.errors import InvalidIdentifier, PermissionDenied
from tidegate.worker.errors import quote as quoted  # quote() here quotes SQL identifiers
from tidegate.worker.sql import Ident, q

MAX_NAME = 63
SUFFIX = re.compile(r"[a-z0-9_]{1,16}")  # what new_partition() appends: the code's own (2025_01), never input


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _check_shape(name: object, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidIdentifier(f"{what} name must be a non-empty string, got {quoted(name)}")
    if len(name) > 2 * MAX_NAME + 1 or any(ord(c) < 32 for c in name) or "\x00" in name:
        raise InvalidIdentifier(f"{what} name {quoted(name)} is not a valid identifier")
    return name


def table(conn: Connection, name: object, *, what: str = "table", in_schema: Ident | None = None) -> Ident:
    """``name`` or ``schema.name`` of an existing table, view or partitioned table; ``in_schema`` (from
    :func:`schema`) qualifies a bare ``name``: it is looked up there, not on the search path."""
    name = _check_shape(name, what)
    schema, _, rel = name.rpartition(".")
    if in_schema is not None and not schema:
        schema, name = in_schema.name, f"{in_schema.name}.{rel}"
    row = conn.execute(
        q("catalog_table"),
        {"rel": rel, "schema": schema},
    ).first()
    if row is None:
        raise InvalidIdentifier(f"{what} {quoted(name)} does not exist")
    return Ident(sql=f"{quote(row[0])}.{quote(row[1])}", name=name)


SYSTEM_SCHEMA = re.compile(r"pg_.*|information_schema", re.IGNORECASE)


def schema(conn: Connection, name: object, *, what: str = "schema") -> Ident:
    """An existing schema, named exactly (a layout's tables are looked up in it). PostgreSQL's own
    schemas (pg_catalog, pg_toast, pg_temp_N, information_schema) are refused: no event store lives there."""
    if not isinstance(name, str) or not name or len(name) > MAX_NAME or any(ord(c) < 32 for c in name):
        raise InvalidIdentifier(f"{what} {quoted(name)} is not a valid schema name (1 to {MAX_NAME} characters,"
                                " no control characters)")
    if SYSTEM_SCHEMA.fullmatch(name):
        raise InvalidIdentifier(f"{what} {quoted(name)} is a PostgreSQL system schema, not an event store's")
    row = conn.execute(q("catalog_schema"), {"schema": name}).first()
    if row is None:
        raise InvalidIdentifier(f"{what} {quoted(name)} does not exist")
    if not row[1]:
        raise PermissionDenied(f"{what} {quoted(name)}: this login has no USAGE privilege on it")
    return Ident(sql=quote(row[0]), name=row[0])


@dataclass(frozen=True)
class Column:
    ident: Ident
    type: str  # format_type(), e.g. "bigint", "timestamp with time zone"
    not_null: bool


def column(conn: Connection, tbl: Ident, name: object, *, what: str = "column") -> Column:
    name = _check_shape(name, what)
    row = conn.execute(
        q("catalog_column"),
        {"rel": tbl.sql, "col": name},
    ).first()
    if row is None:
        raise InvalidIdentifier(f"{what} {quoted(name)} does not exist in table {quoted(tbl.name)}")
    return Column(Ident(sql=quote(name), name=name), type=row[0], not_null=bool(row[1]))


def primary_key(conn: Connection, tbl: Ident) -> list[Ident]:
    rows = conn.execute(
        q("catalog_primary_key"),
        {"rel": tbl.sql},
    ).all()
    return [Ident(sql=quote(r[0]), name=r[0]) for r in rows]


def has_leading_index(conn: Connection, tbl: Ident, col: Column) -> bool:
    """Whether some btree index starts with ``col`` (keyset batches need one)."""
    return bool(
        conn.execute(
            q("catalog_leading_index"),
            {"rel": tbl.sql, "col": col.ident.name},
        ).scalar()
    )


def columns(conn: Connection, tbl: Ident) -> list[Column]:
    """Every stored (not generated, not dropped) column of ``tbl``, in table order."""
    rows = conn.execute(
        q("catalog_columns"),
        {"rel": tbl.sql},
    ).all()
    return [Column(Ident(sql=quote(r[0]), name=r[0]), type=r[1], not_null=bool(r[2])) for r in rows]


def column_list(cols: list[Column]) -> Ident:
    """Catalog-checked columns as one ``"a", "b", ...`` list (INSERT ... SELECT of whole rows)."""
    if not cols:
        raise InvalidIdentifier("an empty column list")
    return Ident(sql=", ".join(c.ident.sql for c in cols), name=",".join(c.ident.name for c in cols))


def type_of(col: Column) -> Ident:
    """The column's type as the catalog spells it (``format_type``), for a CAST."""
    return Ident(sql=col.type, name=col.type)


def new_partition(conn: Connection, parent: Ident, suffix: str) -> Ident:
    """The name of a partition to create under ``parent`` (an existing table): its catalog name, ``_`` and
    ``suffix`` (``events_hot`` + ``2025_01``), in its schema. ``suffix`` is lower-case letters, digits and
    ``_`` (the caller builds it from a checked date); the name may or may not exist yet."""
    if not isinstance(suffix, str) or not SUFFIX.fullmatch(suffix):
        raise InvalidIdentifier(f"partition suffix {quoted(suffix)} must be lower-case letters, digits or _")
    schema, rel = conn.execute(q("catalog_relation_name"), {"rel": parent.sql}).one()
    name = f"{rel}_{suffix}"
    if len(name.encode()) > MAX_NAME:
        raise InvalidIdentifier(f"partition name {quoted(name)} is longer than {MAX_NAME} bytes")
    return Ident(sql=f"{quote(schema)}.{quote(name)}", name=name)
