"""Named SQL, loaded once; the query boundary.

``queries.sql`` holds every runtime query of ``tidegate.worker`` under a ``-- name: NAME`` header
followed by a one-line ``-- description``. Python calls them by name with named parameters only, so
the SQL the runtime sends can be read, and reviewed, in one file.

The boundary: two modules run these queries (call :func:`q`), every other module calls them.

* ``worker/store.py``: one function per query on tidegate's own tables (queue, jobs, slices, workers,
  audit, errors, approved statements) and on the server's activity the runtime watches (the gates'
  pg_stat_* reads, a batch's backend, transaction-local settings). The job kinds (``tidegate.jobs``)
  call these too.
* ``worker/identifiers.py``: the system catalog (pg_class, pg_attribute, pg_index). It is the one
  validator that turns a user's table or column name into an :class:`Ident`, and keeps the lookups
  that guarantee is built on beside it.

The live-worker rule (a heartbeat younger than the lease) is the view ``tidegate_live_workers``
(migration 0011); queries read the view and never repeat the condition. tests/test_layers.py holds
the code to all of this. A job kind's SQL on a user's tables or its own (an archive layout, a
watcher's cursor) is the job kind's: in ``.sql`` files beside it, filled by :func:`render`.

Some statements work on a user's table. Their text holds placeholders such as ``{source}``;
:func:`render` fills them only with :class:`Ident` values, which only the catalog validator
(``worker/identifiers.py``) creates, and :class:`Fragment` values: SQL text the code assembles
from its own constants (a condition, a SET list), which may hold placeholders of its own. A plain
string is refused.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from functools import cache
from importlib import resources

from sqlalchemy import TextClause, text

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Ident:
    """A quoted identifier (possibly schema-qualified) known to exist: built by worker/identifiers.py
    from the catalog, the only kind of value :func:`render` puts into SQL text."""

    sql: str
    name: str

    def __str__(self) -> str:
        return self.name


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


def compose(template: str, **parts: Fragment) -> Fragment:
    """A fragment from a fragment template: fills the ``{placeholders}`` named in ``parts`` (fragments
    only) and leaves the others for :func:`render` (a condition numbered per filter, say)."""
    unused = set(parts) - _fields(template)
    if unused:
        raise KeyError(f"template has no place for {sorted(unused)}")
    for name, part in parts.items():
        if not isinstance(part, Fragment):
            raise TypeError(f"{name}: only fragments compose; identifiers go to render()")
    return Fragment(_FIELD.sub(lambda m: parts.get(m[1], m[0]), template))


def render(template: str, **values: Ident | Fragment) -> TextClause:
    """Fill ``{placeholders}`` in a template: fragments first, then catalog-checked identifiers."""
    fragments = {k: v for k, v in values.items() if isinstance(v, Fragment)}
    if fragments:
        template = compose(template, **fragments)
    idents = {k: v for k, v in values.items() if k not in fragments}
    wanted = _fields(template)
    if wanted != set(idents):
        raise KeyError(f"template wants {sorted(wanted)}, got {sorted(idents)}")
    for name, value in idents.items():
        if not isinstance(value, Ident):
            raise TypeError(f"{name}: SQL identifiers must come from the catalog validator")
    return text(template.format(**{k: v.sql for k, v in idents.items()}))
