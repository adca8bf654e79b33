"""Python's cyclic garbage collector runs between a slice's batches, not inside them.

A batch of a Python handler makes hundreds of thousands of objects that all live until its write: the
demo's 5,000 snapshots are some 300,000 (rows, parsed JSON, 50,000 records), and with the read-ahead the
next batch's as many again. The collector, left to itself, walks them again and again while they pile up
(every 700 new objects a young collection, and full ones as the old generation grows): 60% of a Python
batch's client CPU before this (bench/RESULTS.md, 2026-12-03). Almost all of it is freed by reference
counts when the batch is done, whatever the collector does.

So while a worker works a slice the collector is off, and :meth:`Collector.between` (after each batch)
runs a full collection when its time has come: at least ``EVERY`` seconds after the last one, and 20
times as long as the last one took, so it costs under 5% of a worker's time whatever the heap's size. A
cycle made in a batch (a handler's own) waits that long to be freed. Back on as it was when the slice is
let go."""

from __future__ import annotations

import gc
import time
from types import TracebackType

EVERY = 1.0  # seconds, at least, between two collections while a slice is worked
SHARE = 20.0  # and at least this many times the last collection's own time


class Collector:
    """``with Collector() as c:`` around a slice's batches; ``c.between()`` after each one."""

    def __init__(self) -> None:
        self._enabled = False
        self._next = 0.0

    def __enter__(self) -> Collector:
        self._enabled = gc.isenabled()
        gc.disable()
        self._next = time.monotonic() + EVERY
        return self

    def between(self) -> None:
        """A full collection if its time has come (and the collector was on when the slice began)."""
        now = time.monotonic()
        if self._enabled and now >= self._next:
            gc.collect()
            done = time.monotonic()
            self._next = done + max(EVERY, SHARE * (done - now))

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._enabled:
            gc.enable()
