"""Named SQL, loaded once.

``queries.sql`` holds every runtime query under a ``-- name: NAME`` header
followed by a one-line ``-- description``. Python calls them by name with
named parameters only, so the SQL the runtime sends can be read, and
reviewed, in one file.

Some statements work on a user's table. Their text holds placeholders such as
``{source}``; :func:`render` fills them only with :class:`worker.identifiers.Ident`
values, which only the catalog validator creates, and :class:`Fragment` values: SQL
text the code assembles from its own constants (a condition, a SET list), which may
hold placeholders of its own. A plain string is refused.
"""

from __future__ import annotations

import re
import string
from functools import cache
from importlib import resources

from sqlalchemy import TextClause, text

from tidegate.worker.identifiers import Ident

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def load(package: str, filename: str) -> dict[str, str]:
    """Every ``-- name:`` section of a SQL file shipped in ``package``."""
    source = resources.files(package).joinpath(filename).read_text()
    parts = _HEADER.split(source)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [line for line in body.strip().splitlines() if not line.startswith("-- ")]
        queries[name] = "\n".join(lines).strip().rstrip(";")
    return queries


def raw(name: str) -> str:
    return load(__package__, "queries.sql")[name]


@cache
def q(name: str) -> TextClause:
    """The named runtime query as a SQLAlchemy ``text()`` clause."""
    return text(raw(name))


class Fragment(str):
    """SQL text built by the code from its own constants, never from input: a piece of a template
    (``AND``-ed conditions, a SET list) whose own ``{placeholders}`` :func:`render` fills in turn."""


_FIELD = re.compile(r"\{(\w+)\}")


def _fields(template: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(template) if field}


def render(template: str, **values: Ident | Fragment) -> TextClause:
    """Fill ``{placeholders}`` in a template: fragments first, then catalog-checked identifiers."""
    fragments = {k: v for k, v in values.items() if isinstance(v, Fragment)}
    if fragments:
        unused = set(fragments) - _fields(template)
        if unused:
            raise KeyError(f"template has no place for {sorted(unused)}")
        template = _FIELD.sub(lambda m: fragments.get(m[1], m[0]), template)
    idents = {k: v for k, v in values.items() if k not in fragments}
    wanted = _fields(template)
    if wanted != set(idents):
        raise KeyError(f"template wants {sorted(wanted)}, got {sorted(idents)}")
    for name, value in idents.items():
        if not isinstance(value, Ident):
            raise TypeError(f"{name}: SQL identifiers must come from the catalog validator")
    return text(template.format(**{k: v.sql for k, v in idents.items()}))
