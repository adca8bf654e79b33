"""What the runtime needs from a job kind, and how kinds are found.

A job kind is a small object: it validates a payload and plans slices, and it
processes one batch inside a transaction the runtime gives it. It never
claims, commits, sleeps or signals: that is the runtime's business.

Kinds (and the CLI commands that go with them) come from the
``tidegate.plugins`` entry point; a plugin module exposes ``KINDS`` (a list of
:class:`JobKind`) and ``COMMANDS`` (click commands). Tests and benchmarks may
call :func:`register` for extra kinds (the benchmark's ``noop``).
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import re
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol

from sqlalchemy import Connection

from tidegate.worker.keys import Key, KeyType

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlicePlan:
    start: Key  # exclusive cursor the slice starts after
    end: Key  # exclusive end


@dataclass(frozen=True)
class Plan:
    """A validated job, ready to be stored: its parameters and its slices."""

    params: dict[str, Any]
    owner: str
    key_type: KeyType
    from_key: Key
    to_key: Key
    batch_size: int
    concurrency: int
    slices: list[SlicePlan]
    total_estimate: int | None = None


@dataclass(frozen=True)
class ItemError:
    item_key: str
    error_type: str
    message: str
    sample: str | None = None


@dataclass
class BatchResult:
    """What one batch did. ``checkpoint`` is the new exclusive cursor."""

    checkpoint: Key
    processed: int
    exhausted: bool
    errors: list[ItemError] = field(default_factory=list)


@dataclass(frozen=True)
class BatchContext:
    job_id: str
    slice_no: int
    params: dict[str, Any]
    key_type: KeyType
    batch_size: int
    enqueued_by: str | None = None  # the login that queued the job (its own SQL runs on its rights)


class JobKind(Protocol):
    name: str

    def plan(self, conn: Connection, payload: Any) -> Plan:
        """Validate ``payload`` (raise InvalidInput with a clear message) and plan slices."""
        ...

    def process(self, conn: Connection, ctx: BatchContext, cursor: Key, end: Key) -> BatchResult:
        """Process the next batch after ``cursor`` (exclusive), below ``end`` (exclusive)."""
        ...

    # Optional: ``summary(engine, job_id) -> dict`` — what the runner logs when the job ends
    # (archive-range: attempted, archived, skipped, failed, elapsed, candidates left).


_registry: dict[str, JobKind] = {}
_loaded = False

# The modules whose handlers a payload may name, besides the ``tidegate.handlers`` entry points: set by the
# deployment (or `tidegate worker --handlers`), read by the job kinds' handler registry in each process.
HANDLERS_ENV = "TIDEGATE_HANDLERS"
MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def register(kind: JobKind) -> None:
    _registry[kind.name] = kind


class OneShotKind(Protocol):
    """A small job that needs no slices or checkpoints: ``run`` does it all in the transaction given.

    The runner claims such jobs in handfuls, marked done by the claim itself, and runs them in that
    one transaction, so the queue's own overhead stays small (the noop benchmark measures it) and a
    job's mark commits with its effects. If any job of a handful raises, the whole transaction rolls
    back and the next handfuls run each job in its own savepoint, so ``run`` may run more than once
    for one job: effects outside the database must be idempotent."""

    name: str
    one_shot: bool  # True

    def run(self, conn: Connection, payload: Any) -> None: ...


class OneShot:
    """Base for one-shot kinds: subclass, set ``name`` and write ``run``."""

    name: str
    one_shot = True

    def plan(self, conn: Connection, payload: Any) -> Any:  # never called for one-shot kinds
        raise NotImplementedError

    def process(self, *args: Any) -> Any:
        raise NotImplementedError

    def run(self, conn: Connection, payload: Any) -> None:
        raise NotImplementedError


def _load_plugins() -> list[Any]:
    """Modules of the ``tidegate.plugins`` entry point, plus those named in ``$TIDEGATE_PLUGINS``
    (comma-separated module names: a deployment's own kinds without packaging them)."""
    loaders = [(ep.value, ep.load) for ep in entry_points(group="tidegate.plugins")]
    for name in filter(None, (n.strip() for n in os.environ.get("TIDEGATE_PLUGINS", "").split(","))):
        loaders.append((name, functools.partial(importlib.import_module, name)))
    modules = []
    for name, load in loaders:
        try:
            modules.append(load())
        except Exception:  # a broken plugin must not take the pool down
            log.exception("could not load tidegate plugin %s", name)
    return modules


def kinds() -> dict[str, JobKind]:
    global _loaded
    if not _loaded:
        for module in _load_plugins():
            for kind in getattr(module, "KINDS", []):
                _registry.setdefault(kind.name, kind)
        _loaded = True
    return _registry


def by_alias(name: str) -> JobKind | None:
    """A kind by its name, with dashes for underscores, or one of its ``aliases``."""
    for kind in kinds().values():
        if name.replace("-", "_") == kind.name or name in getattr(kind, "aliases", ()):
            return kind
    return None


def plugin_commands() -> list[Any]:
    return [cmd for module in _load_plugins() for cmd in getattr(module, "COMMANDS", [])]
