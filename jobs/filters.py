"""Structured row filters for backfill-range (``--where``): narrow a job to a slice of its range.

A filter is ``{"field": column, "op": operator, "value": value}`` in the payload (so a plain
INSERT can give them too); the CLI parses ``--where 'tenant_id = 7'``, ``'user_id in 1,2,3'``,
``'raw_linkset is null'`` or ``'region!=eu'``. The field must be a column of the source (checked
against the catalog and quoted); the operator comes from a fixed list; values are always bound
parameters, which the server casts to the column's type. Filters combine with AND.

A field may go on into a ``jsonb`` column: ``'raw.rawLinkset is null'``, ``'doc.meta.source = nvd'``
(payload: ``{"field": "doc", "path": ["meta", "source"], "op": "=", "value": "nvd"}``). The column is
checked in the catalog like any field and must be of type ``jsonb``; the path's elements are one bound
``text[]`` parameter (``col #>> CAST(:w0_p AS text[])``), never spliced, so a key holding quotes, a
``'; drop`` or any unicode is only ever a key to look up. The value at the path is read as text
(``#>>``): ``is null`` matches a missing key and a JSON ``null`` alike (as MongoDB's ``{f: null}``;
also a path through a non-object, and a NULL column), ``is not null`` the rest; ``= X``, ``!= X`` and
``in`` compare that text (a string without its quotes, a number or ``true`` as written in the JSON), so
a missing key matches neither ``=`` nor ``!=``. Ordering (``<``...) is refused on a path: it would
compare text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from tidegate.worker import identifiers
from tidegate.worker.errors import InvalidInput, quote
from tidegate.worker.sql import Fragment, compose, load, render

SQL = load(__package__, "filters.sql")
# operator -> a condition, with {f} for the column and {v} for the bound value(s): constants, never input text
OPS = {"=": "{f} = {v}", "!=": "{f} <> {v}", "<": "{f} < {v}", "<=": "{f} <= {v}", ">": "{f} > {v}",
       ">=": "{f} >= {v}", "in": "{f} IN ({v})", "is null": "{f} IS NULL", "is not null": "{f} IS NOT NULL"}
# the same on the text at a JSON path of a jsonb column: {p} is the bound text[] path
JSON_OPS = {"=": "{f} #>> {p} = {v}", "!=": "{f} #>> {p} <> {v}", "in": "{f} #>> {p} IN ({v})",
            "is null": "{f} #>> {p} IS NULL", "is not null": "{f} #>> {p} IS NOT NULL"}
NO_VALUE = {"is null", "is not null"}
MAX_IN = 1000
MAX_PATH = 32  # elements of a JSON path
MAX_ELEMENT = 255  # characters of one element
_SYNTAX = re.compile(
    r"^\s*([A-Za-z_][A-Za-z0-9_$]*)((?:\.[^\s=<>!]*)*)\s*(is\s+not\s+null|is\s+null|!=|<>|<=|>=|=|<|>|\s+in\s+)"
    r"\s*(.*?)\s*$", re.IGNORECASE | re.DOTALL)


def parse(spec: str) -> dict[str, Any]:
    """``'FIELD OP VALUE'`` as typed on the command line -> the payload form."""
    m = _SYNTAX.match(spec)
    if m is None:
        raise InvalidInput(f"--where {quote(spec)}: expected FIELD OP VALUE with OP one of {', '.join(OPS)}")
    field, path, op, value = m.group(1), m.group(2), " ".join(m.group(3).lower().split()), m.group(4)
    op = "!=" if op == "<>" else op
    out: dict[str, Any] = {"field": field}
    if path:  # col.a.b: a JSON path into a jsonb column, checked by normalize()
        out["path"] = path[1:].split(".")
    if op in NO_VALUE:
        if value:
            raise InvalidInput(f"--where {quote(spec)}: {op} takes no value")
        return {**out, "op": op}
    if op == "in":
        items = [v.strip() for v in value.strip().removeprefix("(").removesuffix(")").split(",")]
        return {**out, "op": op, "value": [v for v in items if v]}
    return {**out, "op": op, "value": value.strip("'\"") if len(value) > 1 else value}


def _path(i: int, path: Any) -> list[str]:
    """A JSON path's elements, checked: 1 to MAX_PATH non-empty strings without control characters."""
    if not isinstance(path, list) or not 1 <= len(path) <= MAX_PATH:
        raise InvalidInput(f"where[{i}]: a JSON path needs 1 to {MAX_PATH} elements, got {quote(path, 80)}")
    for j, element in enumerate(path):
        if not isinstance(element, str) or not element:
            raise InvalidInput(f"where[{i}]: JSON path element {j + 1} must be a non-empty string,"
                               f" got {quote(element, 80)}")
        if len(element) > MAX_ELEMENT or any(ord(c) < 32 for c in element):
            raise InvalidInput(f"where[{i}]: JSON path element {j + 1} {quote(element, 80)} is longer than"
                               f" {MAX_ELEMENT} characters or holds a control character")
    return list(path)


def normalize(filters: Any) -> list[dict[str, Any]]:
    """The payload's ``where``, type-checked; raises InvalidInput with what is wrong."""
    if not isinstance(filters, list):
        raise InvalidInput(f"where must be a list of {{field, op, value}} objects, got {type(filters).__name__}")
    out = []
    for i, f in enumerate(filters):
        if not isinstance(f, dict) or set(f) - {"field", "path", "op", "value"} or "field" not in f or "op" not in f:
            raise InvalidInput(f"where[{i}] must be an object with field, op and value (and path), got {quote(f)}")
        op = str(f["op"]).lower().strip()
        if op not in OPS:
            raise InvalidInput(f"where[{i}]: unknown operator {quote(f['op'])}; known: {', '.join(OPS)}")
        head: dict[str, Any] = {"field": f["field"]}
        if "path" in f:
            head["path"] = _path(i, f["path"])
            if op not in JSON_OPS:
                raise InvalidInput(f"where[{i}]: {op} on a JSON path would compare text; use one of"
                                   f" {', '.join(JSON_OPS)}")
        if op in NO_VALUE:
            if f.get("value") is not None:
                raise InvalidInput(f"where[{i}]: {op} takes no value")
            out.append({**head, "op": op})
            continue
        value = f.get("value")
        if op == "in":
            if not isinstance(value, list) or not 1 <= len(value) <= MAX_IN:
                raise InvalidInput(f"where[{i}]: in needs a list of 1 to {MAX_IN} values, got {quote(value)}")
            if not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in value):
                raise InvalidInput(f"where[{i}]: in values must be strings or numbers")
            value = [str(v) for v in value]
        elif not isinstance(value, str | int | float) or isinstance(value, bool):
            raise InvalidInput(f"where[{i}]: {op} needs a string or number value, got {quote(value)}")
        else:
            value = str(value)
        out.append({**head, "op": op, "value": value})
    return out


@dataclass(frozen=True)
class Compiled:
    """`` AND ...`` for a query's ``{where}``, its identifiers and its bound values."""

    sql: Fragment
    idents: dict[str, identifiers.Ident]
    params: dict[str, Any]

    def into(self, template: str, **idents: identifiers.Ident) -> Any:
        return render(template, where=self.sql, **idents, **self.idents)


NONE = Compiled(Fragment(""), {}, {})


def compile_filters(conn: Connection, source: identifiers.Ident, filters: list[dict[str, Any]]) -> Compiled:
    if not filters:
        return NONE
    parts, idents, params = [], {}, {}
    for i, f in enumerate(filters):
        col = identifiers.column(conn, source, f["field"], what="--where field")
        idents[f"w{i}"] = col.ident
        ops, path = OPS, {}
        if "path" in f:  # the path's elements are one bound text[]: never part of the statement's text
            if col.type != "jsonb":
                raise InvalidInput(f"--where field {quote(col.ident.name)} is of type {col.type}: a JSON path"
                                   f" ({'.'.join(f['path'])[:80]}) needs a jsonb column")
            ops, path = JSON_OPS, {"p": Fragment(f"CAST(:w{i}_p AS text[])")}
            params[f"w{i}_p"] = list(f["path"])
        names = []  # the bound parameters: w0, or w0_0, w0_1... for in
        if f["op"] == "in":
            names = [f"w{i}_{j}" for j in range(len(f["value"]))]
            params.update(zip(names, f["value"], strict=True))
        elif f["op"] not in NO_VALUE:
            names = [f"w{i}"]
            params[f"w{i}"] = f["value"]
        values = {"v": Fragment(", ".join(f":{n}" for n in names))} if names else {}
        parts.append(compose(ops[f["op"]], f=Fragment(f"{{w{i}}}"), **path, **values))
    compiled = Compiled(Fragment("".join(f" AND {p}" for p in parts)), idents, params)
    probe = compiled.into(SQL["probe"], source=source)
    try:
        with conn.begin_nested():  # a value that does not fit the column's type fails here, not in a batch
            conn.execute(probe, params)
    except DBAPIError as err:
        first = str(err.orig).strip().splitlines()[0] if err.orig else str(err)
        raise InvalidInput(f"where: {first}") from None
    return compiled
