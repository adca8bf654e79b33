"""The job knobs, defined once: the table below, and what is derived from it.

A knob is a number that sets how a job runs: its batch size, its pace, its canary limit, its place in
the queue. Each is a column (of ``backfill_jobs``, changed live, or of ``queue_jobs``, set at enqueue)
and a payload field of the same name. From :data:`TABLE` come:

- the command-line options of `tidegate enqueue ...` and of `tidegate set` (:func:`options`, :func:`take`);
- the job kinds' payload validation (:func:`check_payload`), so a payload inserted by SQL, or posted to
  the admin API, is held to the same ranges as the command line;
- the parameters of the knob queries (``insert_range_job``, ``set_knobs``: :func:`column_values`);
- the runtime's clamp of whatever slipped past anyway (worker/throttle.py).

The database holds the same ranges as CHECK constraints (``<table>_<knob>_range``, migrations 0009 and
0010); tests/test_knobs.py reads them from the catalog and compares them with this table. NaN and
infinities are outside every range.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import click

from tidegate.worker.bounds import INT4, Bound
from tidegate.worker.errors import InvalidInput

LIVE = "backfill_jobs"  # the knobs a running job reads at each batch: `tidegate set` or an UPDATE changes them
QUEUE = "queue_jobs"  # the queue options, fixed when the job is enqueued


@dataclass(frozen=True, kw_only=True)
class Knob(Bound):
    """One knob: its range (``name``, ``lo``, ``hi``, ``integer``: worker/bounds.py) and where it lives."""

    help: str
    table: str = LIVE  # the table whose column holds it, CHECKed to [lo, hi]
    clearable: bool = False  # NULL ('none' to `tidegate set`) means "no such limit"
    default: float | None = None  # what an absent (or null) field means: the column's default
    kinds: tuple[str, ...] = ()  # the job kinds whose payload takes it; (): every kind
    flag_name: str | None = None  # its command-line flag when not --name-with-dashes

    @property
    def flag(self) -> str:
        return self.flag_name or "--" + self.name.replace("_", "-")

    def applies_to(self, kind: str) -> bool:
        return not self.kinds or kind in self.kinds

    def parse(self, value: Any, field: str | None = None, *, clearing: bool = True) -> Any:
        """``value`` (as typed, or from JSON) checked against the range; with ``clearing``, ``None`` or
        'none' lifts a clearable knob (None). Else InvalidInput naming ``field`` and the range."""
        if isinstance(value, str):
            value = value.strip()
            if self.clearable and clearing and value.lower() == "none":
                return None
        if value is None and self.clearable and clearing:
            return None
        try:
            return self.check(value, field)
        except InvalidInput as err:
            hint = "; or give 'none' to lift it" if self.clearable and clearing else ""
            raise InvalidInput(f"{err}{hint}") from None

    def described(self, *, clearing: bool = False, default: Any = None) -> str:
        """The help text of its option: what it does, its type, range and default."""
        kind = "integer" if self.integer else "number"
        extra = ", or 'none' to lift it" if self.clearable and clearing else ""
        extra += "" if default is None else f"; default {default}"
        return f"{self.help.rstrip('.')} ({kind} {self.describe()}{extra})."


# batch_size has no column default: each kind gives its own (kinds.py's Plan carries it)
TABLE: tuple[Knob, ...] = (
    Knob("batch_size", 1, 100_000, help="Keys per batch, one transaction: source rows of a backfill, streams"
                                        " of an archive; while adaptive, the first estimate."),
    Knob("concurrency", 1, 64, default=1,
         help="Slices worked at once; changed live, a slice is cut in two or let go at its next batch."),
    Knob("max_rows_per_second", 0.001, 1e9, integer=False, clearable=True,
         help="Cap on the job's pace, across its slices."),
    Knob("sleep_between_batches", 0, 3600, integer=False, default=0, help="Seconds each slice waits after a batch."),
    Knob("target_batch_seconds", 0.01, 3600, integer=False, clearable=True, kinds=("backfill_range",),
         help="Adapt the batch size so a batch takes about this long; a batch 4x over is split and retried."),
    Knob("min_batch_size", 1, 100_000, kinds=("backfill_range",), help="Lower bound for the adaptive batch size."),
    Knob("max_batch_size", 1, 100_000, kinds=("backfill_range",), help="Upper bound for the adaptive batch size."),
    Knob("row_limit", 1, 10**15, clearable=True, flag_name="--limit",
         help="Canary: process at most this many rows, then pause; `set --limit none` and `resume` go on."),
    Knob("error_rate_threshold", 0, 1, integer=False, default=0.01, kinds=("backfill_range",),
         help="Pause the job when this share of items fails over the last 1,000."),
    Knob("priority", -INT4 - 1, INT4, table=QUEUE, default=0, help="Higher runs first."),
    Knob("max_attempts", 1, 1000, table=QUEUE, default=5, help="Failed attempts of a batch before the job fails."),
)
KNOBS: dict[str, Knob] = {k.name: k for k in TABLE}
LIVE_KNOBS: tuple[Knob, ...] = tuple(k for k in TABLE if k.table == LIVE)
QUEUE_KNOBS: tuple[Knob, ...] = tuple(k for k in TABLE if k.table == QUEUE)

MAX_BATCH = int(KNOBS["batch_size"].hi)
MAX_CONCURRENCY = int(KNOBS["concurrency"].hi)


def for_kind(kind: str) -> tuple[Knob, ...]:
    """The payload fields among the knobs that job kind ``kind`` takes."""
    return tuple(k for k in LIVE_KNOBS if k.applies_to(kind))


def check_payload(p: dict[str, Any], kind: str, *, default_batch: int) -> None:
    """Check (in place) every knob field of payload ``p`` for kind ``kind``: each given one against its
    range (absent or null: the column's default); ``batch_size`` (default ``default_batch``) and
    ``concurrency`` always set."""
    p["batch_size"] = KNOBS["batch_size"].check(p.get("batch_size", default_batch))
    p["concurrency"] = KNOBS["concurrency"].check(p.get("concurrency", KNOBS["concurrency"].default))
    for knob in for_kind(kind):
        if p.get(knob.name) is not None:
            p[knob.name] = knob.check(p[knob.name])
    if (p.get("min_batch_size") or 1) > (p.get("max_batch_size") or MAX_BATCH):
        raise InvalidInput("min_batch_size must not exceed max_batch_size")


def pace(p: dict[str, Any], kind: str) -> dict[str, Any]:
    """The pace and canary knobs a checked payload ``p`` gives (all but ``batch_size`` and ``concurrency``,
    which every job has): what the job's typed payload keeps as its ``knobs``."""
    return {k.name: p[k.name] for k in for_kind(kind) if k.name in p and k.name not in ("batch_size", "concurrency")}


def column_values(params: dict[str, Any], knobs: Iterable[Knob]) -> dict[str, Any]:
    """The knobs' columns as a validated payload (``params``) fills them: absent or null is the default."""
    return {k.name: k.default if params.get(k.name) is None else params[k.name] for k in knobs}


def options(knobs: Iterable[Knob], *, clearing: bool = False, **defaults: Any) -> Callable[[Any], Any]:
    """Click options for ``knobs``, taken as typed and checked by :func:`take` (so every entry point
    gives the same message). ``clearing``: 'none' lifts a clearable knob (`tidegate set`).
    ``defaults``: a command's own defaults; a knob not given otherwise gets the table's at planning."""
    chosen = list(knobs)

    def decorate(func: Any) -> Any:
        for knob in reversed(chosen):
            default = defaults.get(knob.name)
            shown = None if clearing else knob.default if default is None else default  # `set` changes, no default
            func = click.option(knob.flag, knob.name, metavar="INTEGER" if knob.integer else "NUMBER",
                                default=None if default is None else str(default),
                                help=knob.described(clearing=clearing, default=shown))(func)
        return func

    return decorate


def take(opts: dict[str, Any], knobs: Iterable[Knob], *, clearing: bool = False) -> dict[str, Any]:
    """Pop the options of ``knobs`` from a command's ``opts`` and check them, naming the flag: the knobs
    given, as numbers (None: lifted, with ``clearing``)."""
    given: dict[str, Any] = {}
    for knob in knobs:
        value = opts.pop(knob.name, None)
        if value is not None:
            given[knob.name] = knob.parse(value, knob.flag, clearing=clearing)
    return given
