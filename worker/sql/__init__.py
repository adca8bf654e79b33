"""Named SQL, loaded once.

``queries.sql`` holds every runtime query under a ``-- name: NAME`` header
followed by a one-line ``-- description``. Python calls them by name with
named parameters only, so the SQL the runtime sends can be read, and
reviewed, in one file.

Some statements work on a user's table. Their text holds placeholders such as
``{source}``; :func:`render` fills them only with :class:`worker.identifiers.Ident`
values, which only the catalog validator creates. A plain string is refused.
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


def render(template: str, **idents: Ident) -> TextClause:
    """Fill ``{placeholders}`` in a template with catalog-checked identifiers."""
    wanted = {field for _, field, _, _ in string.Formatter().parse(template) if field}
    if wanted != set(idents):
        raise KeyError(f"template wants {sorted(wanted)}, got {sorted(idents)}")
    for name, value in idents.items():
        if not isinstance(value, Ident):
            raise TypeError(f"{name}: SQL identifiers must come from the catalog validator")
    return text(template.format(**{k: v.sql for k, v in idents.items()}))
