"""Targets: named databases one tidegate serves (a database per tenant or per shard).

Each target keeps its own tidegate tables, so a batch and its checkpoint commit together in that
database. Where the names come from, merged (the environment wins on a name in both):

* ``$TIDEGATE_TARGETS``: ``a=postgresql://...,b=postgresql://...`` (entries separated by commas,
  semicolons or whitespace before ``NAME=``), for deployments that inject secrets as environment;
* the targets file, ``$TIDEGATE_TARGETS_FILE`` or ``$TIDEGATE_HOME/targets.toml`` (``./.tidegate``):
  a ``[targets]`` table of ``NAME = "URL"``, written by `tidegate targets add` with mode 0600.

A name is ``[a-z0-9_-]{1,63}``: it is safe in a file name, a log line, a metrics label and a shell.
A URL is never printed whole: every message masks its password (worker/db.py ``mask_url``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from tidegate.worker.db import check_url, mask_url, tidegate_home
from tidegate.worker.errors import InvalidInput, quote, shorten

log = logging.getLogger(__name__)

ENV = "TIDEGATE_TARGETS"
FILE_ENV = "TIDEGATE_TARGETS_FILE"
NAME = re.compile(r"[a-z0-9_-]{1,63}")
_ENTRY = re.compile(r"(?:^|[,;\s]+)(?=[a-z0-9_-]{1,63}=)")


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    source: str  # "$TIDEGATE_TARGETS" or the file's path

    @property
    def masked(self) -> str:
        return mask_url(self.url)


def check_name(name: str, what: str = "target name") -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InvalidInput(f"{what} {quote(name, 80)} is not a name: use 1 to 63 of a-z, 0-9, _ and -")
    return name


def targets_file() -> Path:
    given = os.environ.get(FILE_ENV)
    return Path(given).resolve() if given else tidegate_home() / "targets.toml"


def parse_env(value: str) -> dict[str, str]:
    """``a=URL,b=URL`` as {name: URL}; a bad name or URL is InvalidInput (the URL masked)."""
    found: dict[str, str] = {}
    for entry in _ENTRY.split(value.strip()):
        if not entry.strip():
            continue
        name, eq, url = entry.strip().partition("=")
        if not eq:
            raise InvalidInput(f"${ENV}: {quote(mask_url(entry), 80)} is not NAME=URL")
        check_name(name, f"${ENV}: target name")
        if name in found:
            raise InvalidInput(f"${ENV}: target {name} is given twice")
        found[name] = check_url(url.strip(), f"${ENV} target {name}:")
    return found


def read_file(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise InvalidInput(f"targets file {path}: not TOML ({str(err)[:200]})") from None
    table = data.get("targets", {})
    if not isinstance(table, dict):
        raise InvalidInput(f"targets file {path}: [targets] is not a table")
    if path.stat().st_mode & 0o077:
        log.warning("targets file %s can be read by others (its URLs may hold passwords): chmod 600 it", path)
    found = {}
    for name, url in table.items():
        check_name(name, f"targets file {path}: target name")
        if not isinstance(url, str):
            raise InvalidInput(f"targets file {path}: target {name} is not a URL string")
        found[name] = check_url(url, f"targets file {path}: target {name}:")
    return found


def load() -> dict[str, Target]:
    """Every target, by name (the environment's over the file's)."""
    path = targets_file()
    found = {n: Target(n, u, str(path)) for n, u in read_file(path).items()}
    env = os.environ.get(ENV)
    if env and env.strip():
        found.update({n: Target(n, u, f"${ENV}") for n, u in parse_env(env).items()})
    return dict(sorted(found.items()))


def _known(found: dict[str, Target]) -> str:
    if not found:
        return f"no target is defined (`tidegate targets add NAME URL`, or ${ENV})"
    return "known: " + shorten(", ".join(found), 400)


def get(name: str) -> Target:
    check_name(name)
    found = load()
    if name not in found:
        raise InvalidInput(f"no target {name}; {_known(found)}")
    return found[name]


def select(names: list[str] | None) -> list[Target]:
    """The targets named (in that order, each once), or every target for None."""
    found = load()
    if names is None:
        if not found:
            raise InvalidInput(_known(found))
        return list(found.values())
    chosen: list[Target] = []
    for name in dict.fromkeys(names):
        check_name(name)
        if name not in found:
            raise InvalidInput(f"no target {name}; {_known(found)}")
        chosen.append(found[name])
    if not chosen:
        raise InvalidInput("no target named")
    return chosen


def split_names(value: str) -> list[str]:
    return [n.strip() for n in value.split(",") if n.strip()]


def _write(path: Path, table: dict[str, str]) -> None:
    """The file, replaced atomically, mode 0600 from its first byte (URLs may hold passwords)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# tidegate targets: NAME = \"postgresql://...\" (written by `tidegate targets add`)", "[targets]"]
    lines += [f"{name} = {json.dumps(url)}" for name, url in sorted(table.items())]
    fd, tmp = tempfile.mkstemp(prefix=".targets-", dir=path.parent)  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add(name: str, url: str, *, replace: bool = False) -> Target:
    check_name(name)
    url = check_url(url, f"target {name}:")
    path = targets_file()
    table = read_file(path)
    if name in table and not replace:
        raise InvalidInput(f"target {name} exists already ({mask_url(table[name])}): give --replace to change it")
    table[name] = url
    _write(path, table)
    return Target(name, url, str(path))


def remove(name: str) -> Target:
    check_name(name)
    path = targets_file()
    table = read_file(path)
    if name not in table:
        env = f"; it is defined in ${ENV}, which only its environment can change" if name in load() else ""
        raise InvalidInput(f"no target {name} in {path}{env}")
    url = table.pop(name)
    _write(path, table)
    return Target(name, url, str(path))


@dataclass(frozen=True)
class Probe:
    """What `tidegate targets list` says of a target."""

    reachable: bool
    revision: str | None = None  # the applied revision(s), None with no tidegate tables
    migrated: bool = False  # at this code's head (or ahead of it)
    error: str | None = None


def probe(target: Target, timeout: int = 5) -> Probe:
    """Connect once (at most ``timeout`` seconds) and read the schema revision; never raises for the target's sake."""
    from tidegate.worker import schema, store
    from tidegate.worker.db import first_line, is_outage, make_engine

    engine = make_engine(target.url, application_name="tidegate-targets", pool_size=1, max_overflow=0,
                         connect_timeout=timeout)
    try:
        try:
            with engine.connect() as conn:
                current = sorted(store.schema_revisions(conn))
        except Exception as err:
            cause = getattr(err, "orig", None) or err.__cause__ or err
            return Probe(not is_outage(err), error=mask_url(first_line(cause))[:300])
        known = schema.revisions()
        migrated = bool(current) and (known is None or tuple(current) == known[0] or bool(set(current) - known[1]))
        return Probe(True, ",".join(current) or None, migrated)
    finally:
        engine.dispose()
