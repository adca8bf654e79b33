"""What the runtime needs from a job kind, and how kinds are found.

A job kind is a small object of one of two shapes, each a base class here with every hook
declared and its default, so the runtime calls methods and never looks a hook up:

* :class:`RangeKind`: a long job over a key range. ``plan`` validates the payload and cuts the
  range into slices; then, batch after batch, ``next_keys`` reads how far the next batch reaches
  after the slice's cursor and ``process_range`` processes the keys of that bounded range, in a
  transaction the runtime gives it. The runtime owns the cursor, the slice's end, the batch size
  and the checkpoint: it decides where a batch ends and when a slice is exhausted (like
  job-iteration's ``build_enumerator`` and ``each_iteration``).
* :class:`OneShotKind`: a small job that ``run`` does whole in one transaction, no slices.

A kind never claims, commits, sleeps or signals: that is the runtime's business. Its payload is
a :class:`Payload`, a frozen dataclass parsed once from the job's JSON with its validation.

Kinds (and the CLI commands that go with them) come from the ``tidegate.plugins`` entry point;
a plugin module exposes ``KINDS`` (a list of kinds) and ``COMMANDS`` (click commands). Tests and
benchmarks may call :func:`register` for extra kinds (the benchmark's ``noop``).
"""

from __future__ import annotations

import functools
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import logging
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Self

from sqlalchemy import Connection, Engine

from tidegate.worker import bounds, keys, knobs
from tidegate.worker.errors import InvalidInput, shorten
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


@dataclass(frozen=True)
class BatchContext:
    """The job a batch belongs to: what ``next_keys`` and ``process_range`` are told besides the keys."""

    job_id: str
    slice_no: int
    params: dict[str, Any]  # the job's params, as its plan wrote them
    key_type: KeyType
    enqueued_by: str | None = None  # the login that queued the job (its own SQL runs on its rights)


@dataclass(frozen=True)
class NextKeys:
    """How far the next batch reaches: ``count`` keys read after the cursor (at most the limit asked),
    the greatest of them ``last``. ``rows``: the rows keyed in ``(cursor, last]`` when the read knows
    it (rows that tie with ``last`` beyond the limit included: they fall in the same batch)."""

    last: Key
    count: int
    rows: int | None = None


@dataclass(frozen=True)
class KeyRange:
    """The bounded range one batch processes: every key in ``(lo, hi]``. ``rows`` is what
    :meth:`RangeKind.next_keys` said the range holds, if it knew."""

    lo: Key
    hi: Key
    rows: int | None = None
    # the slice's exclusive end and the batch's key limit, when the runtime's next batch of the slice will
    # start at ``hi`` and ask for the same limit: a kind may read that range ahead (``next_range``) while this
    # one's write runs on the server. ``limit`` 0: the next batch's size is not known (an adaptive batch).
    end: Key | None = None
    limit: int = 0


@dataclass(frozen=True)
class BatchResult:
    """What a kind's ``process_range`` did: the items it processed and those that failed (the batch goes on)."""

    processed: int
    errors: list[ItemError] = field(default_factory=list)


def next_range(kind: RangeKind, conn: Connection, ctx: BatchContext, cursor: Key, end: Key,
               limit: int) -> tuple[KeyRange, bool] | None:
    """The range the runtime's batch after ``cursor`` processes, and whether it exhausts the slice ending at
    ``end``; None when no key is left. A short read means nothing is left before ``end``, so the range
    reaches to the slice's last key; so does a read whose last key is the slice's last."""
    last_key = keys.before(end)
    reach = kind.next_keys(conn, ctx, cursor, end, limit)
    if reach is None or reach.count <= 0:
        return None
    exhausted = reach.count < limit or reach.last >= last_key  # type: ignore[operator]
    return KeyRange(cursor, last_key if exhausted else reach.last, reach.rows), exhausted


def dense_keys(after: int, end: int, limit: int) -> NextKeys | None:
    """``next_keys`` for keys that are the integers themselves, one item each (a snapshot numbered
    1..N): the next ``limit`` keys after ``after`` and below ``end``, read without a query."""
    last = min(after + limit, end - 1)
    return NextKeys(last, last - after, rows=last - after) if last > after else None


@dataclass(frozen=True, kw_only=True)
class Payload:
    """Base of a kind's typed payload: a frozen dataclass built once, by ``parse``, from the job's
    JSON with every field checked (``InvalidInput`` names the field). ``FIELDS``: the JSON fields
    a payload may give; ``params`` is what the plan stores (JSON again)."""

    FIELDS: ClassVar[frozenset[str]] = frozenset()

    owner: str
    batch_size: int
    concurrency: int
    knobs: Mapping[str, Any] = field(default_factory=dict)  # the pace knobs given: the job's knob columns

    @classmethod
    def parse(cls, raw: Any) -> Self:
        raise NotImplementedError

    @classmethod
    def json_object(cls, raw: Any) -> dict[str, Any]:
        """``raw`` as a dict of known fields (a copy), or InvalidInput."""
        if not isinstance(raw, dict):
            raise InvalidInput(f"payload must be a JSON object, got {type(raw).__name__}")
        unknown = sorted(set(raw) - cls.FIELDS)
        if unknown:
            raise InvalidInput(f"unknown payload field(s): {shorten(', '.join(unknown))};"
                               f" known: {', '.join(sorted(cls.FIELDS))}")
        return dict(raw)

    @staticmethod
    def knob_fields(kind: str) -> frozenset[str]:
        """The JSON fields of the knobs kind ``kind`` takes (worker/knobs.py): part of its ``FIELDS``."""
        return frozenset(k.name for k in knobs.for_kind(kind))

    @staticmethod
    def common(p: dict[str, Any], kind: str, *, default_batch: int) -> dict[str, Any]:
        """The fields every payload has, checked: ``owner``, ``batch_size`` (default ``default_batch``),
        ``concurrency`` and the pace ``knobs``, as keyword arguments of the payload's constructor. The
        knob fields of ``p`` are checked in place against the one table of knobs."""
        knobs.check_payload(p, kind, default_batch=default_batch)
        return {"owner": bounds.owner(p.get("owner", "unknown")), "batch_size": p["batch_size"],
                "concurrency": p["concurrency"], "knobs": knobs.pace(p, kind)}

    def params(self) -> dict[str, Any]:
        """The payload as the job's params (JSON): every field given, the knobs flat beside them."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "knobs"}
        return {k: v for k, v in out.items() if v is not None} | dict(self.knobs)


class JobKind:
    """What every kind declares. Subclass :class:`RangeKind` or :class:`OneShotKind`, not this."""

    name: str = ""
    aliases: tuple[str, ...] = ()  # other names the CLI and the admin API accept (``archive``)
    one_shot: ClassVar[bool] = False

    def details(self, conn: Connection, job_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Facts of its own `tidegate status` adds to these jobs ({job_id: {fact: number}}): none by default."""
        return {}


class RangeKind(JobKind):
    """A job over a key range, in slices and batches: subclass, set ``name`` and write ``plan``,
    ``next_keys`` and ``process_range``.

    Each batch is one transaction: the runtime asks ``next_keys`` how far the next batch reaches
    (at most ``limit`` keys after the cursor, below the slice's end), then ``process_range`` for
    the keys of ``(lo, hi]``, then records the checkpoint ``hi`` with the batch's work. When the
    read comes back short, ``hi`` is the slice's last key and the slice is done. A kind that must
    process a range in one statement (an INSERT ... SELECT) runs it in ``process_range``: the two
    calls are two statements per batch, no more."""

    def plan(self, conn: Connection, payload: Any) -> Plan:
        """Validate the raw ``payload`` (raise InvalidInput with a clear message) and plan slices."""
        raise NotImplementedError

    def next_keys(self, conn: Connection, ctx: BatchContext, after: Key, end: Key, limit: int) -> NextKeys | None:
        """The next batch's reach: up to ``limit`` keys after ``after`` (exclusive), below ``end``
        (exclusive); None (or a count of 0) when no key is left. :func:`dense_keys` for numbered keys."""
        raise NotImplementedError

    def process_range(self, conn: Connection, ctx: BatchContext, batch: KeyRange) -> BatchResult:
        """Process every key in ``(batch.lo, batch.hi]`` in the transaction given; failed items in the result."""
        raise NotImplementedError

    def summary(self, engine: Engine, job_id: str) -> dict[str, Any] | None:
        """What the runner logs when the job ends (archive-range: attempted, archived, skipped...): none by default."""
        return None


class OneShotKind(JobKind):
    """A small job that needs no slices or checkpoints: subclass, set ``name`` and write ``run``.

    The runner claims such jobs in handfuls, marked done by the claim itself, and runs them in that
    one transaction, so the queue's own overhead stays small (the noop benchmark measures it) and a
    job's mark commits with its effects. If any job of a handful raises, the whole transaction rolls
    back and the next handfuls run each job in its own savepoint, so ``run`` may run more than once
    for one job: effects outside the database must be idempotent."""

    one_shot: ClassVar[bool] = True

    def run(self, conn: Connection, payload: Any) -> None:
        raise NotImplementedError


Kind = RangeKind | OneShotKind

_registry: dict[str, Kind] = {}
_loaded = False

# The modules whose handlers a payload may name, besides the ``tidegate.handlers`` entry points: set by the
# deployment (or `tidegate worker --handlers`), read by the job kinds' handler registry in each process.
HANDLERS_ENV = "TIDEGATE_HANDLERS"
MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def find_deployment_module(name: str) -> bool:
    """Can ``name``, a module the deployment named ($TIDEGATE_HANDLERS, --handlers, $TIDEGATE_PLUGINS; never a
    payload), be imported? As Python users expect, one that is not installed is looked for in the current
    directory too, as ``python -m`` would: the directory is then added to the end of ``sys.path`` (an installed
    module of the same name wins), and worker processes, spawned with this ``sys.path``, see it as well."""
    if not MODULE_NAME.fullmatch(name):
        return False
    try:
        if importlib.util.find_spec(name) is not None:
            return True
    except Exception:  # noqa: S110  (a parent package that fails to import: looked for below, else missing)
        pass
    try:
        cwd = os.getcwd()
    except OSError:  # the directory was removed under us
        return False
    if cwd in sys.path or importlib.machinery.PathFinder.find_spec(name.partition(".")[0], [cwd]) is None:
        return False
    sys.path.append(cwd)
    importlib.invalidate_caches()
    log.debug("module %s found in the current directory %s: added to the import path", name, cwd)
    try:
        return importlib.util.find_spec(name) is not None
    except Exception:
        return False


def import_deployment_module(name: str) -> Any:
    """Import ``name``, a module the deployment named (:func:`find_deployment_module` says where from)."""
    find_deployment_module(name)
    return importlib.import_module(name)


def register(kind: Kind) -> None:
    if not isinstance(kind, RangeKind | OneShotKind):
        raise TypeError(f"a job kind subclasses RangeKind or OneShotKind, got {type(kind).__name__}")
    _registry[kind.name] = kind


@functools.cache
def _all_entry_points() -> importlib.metadata.EntryPoints:
    return importlib.metadata.entry_points()


def entry_points(group: str) -> list[importlib.metadata.EntryPoint]:
    """The installed entry points of ``group``. The installed packages' metadata is read once per process
    (every distribution's, whichever group is asked: a few milliseconds each time), and a pool's forked
    workers inherit what their supervisor read: the kinds' and the handlers' groups cost one scan."""
    return list(_all_entry_points().select(group=group))


@functools.cache
def _load_plugins() -> list[Any]:
    """Modules of the ``tidegate.plugins`` entry point, plus those named in ``$TIDEGATE_PLUGINS``
    (comma-separated module names: a deployment's own kinds without packaging them); loaded once."""
    loaders = [(ep.value, ep.load) for ep in entry_points("tidegate.plugins")]
    for name in filter(None, (n.strip() for n in os.environ.get("TIDEGATE_PLUGINS", "").split(","))):
        loaders.append((name, functools.partial(import_deployment_module, name)))
    modules = []
    for name, load in loaders:
        try:
            modules.append(load())
        except Exception:  # a broken plugin must not take the pool down
            log.exception("could not load tidegate plugin %s", name)
    return modules


def kinds() -> dict[str, Kind]:
    global _loaded
    if not _loaded:
        for module in _load_plugins():
            for kind in getattr(module, "KINDS", []):
                if isinstance(kind, RangeKind | OneShotKind):
                    _registry.setdefault(kind.name, kind)
                else:
                    log.error("tidegate plugin %s: %r is not a RangeKind or a OneShotKind; skipped",
                              module.__name__, kind)
        _loaded = True
    return _registry


def by_alias(name: str) -> Kind | None:
    """A kind by its name, with dashes for underscores, or one of its ``aliases``."""
    for kind in kinds().values():
        if name.replace("-", "_") == kind.name or name in kind.aliases:
            return kind
    return None


def plugin_commands() -> list[Any]:
    return [cmd for module in _load_plugins() for cmd in getattr(module, "COMMANDS", [])]
