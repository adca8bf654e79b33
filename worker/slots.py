"""Which batch each worker process of a pool is in, in memory the pool shares with its workers.

A worker writes its slot when a batch's transaction starts and clears it when the transaction is
over; the pool reads the slot of a worker that died. A slot still set means the worker died
during that batch: the pool counts the death against the job (poison quarantine,
worker/deadline.py), ends the batch's server backend if it outlived its client, and expires
the dead worker's lease so its slice is taken over at once.

No lock, like worker/wakeup.py: the writer may be SIGKILLed at any instruction. The pool reads a
slot only after its writer is dead, and ``busy`` is written last on enter and first on leave, so
a torn write reads as "not in a batch" (at worst one death not counted).
"""

from __future__ import annotations

import ctypes
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


class _Slot(ctypes.Structure):
    _fields_ = [
        ("busy", ctypes.c_int),
        ("job", ctypes.c_ubyte * 16),  # the job's uuid
        ("slice_no", ctypes.c_longlong),
        ("backend_pid", ctypes.c_longlong),
        ("xact_start_us", ctypes.c_longlong),  # microseconds since the epoch: exact, unlike a float
        ("worker_id", ctypes.c_char * 200),
        ("target", ctypes.c_int),  # which target's database the batch is in (a pool over several targets)
    ]


@dataclass(frozen=True)
class InFlight:
    """A batch a worker was in when it was last seen."""

    worker_id: str
    job_id: str
    slice_no: int
    backend_pid: int
    xact_start: datetime
    target: int = 0  # the index of its target in the pool's list (0 for a pool over one database)


class Slot:
    """One worker's slot (passed to the worker process as a Process argument)."""

    def __init__(self, table: Any, index: int, target: int = 0) -> None:
        self._table = table
        self._index = index
        self._target = target

    def for_target(self, target: int) -> Slot:
        """The same slot, for the batches of one target of a pool over several."""
        return Slot(self._table, self._index, target)

    @property
    def _s(self) -> _Slot:
        return self._table[self._index]

    def started(self, worker_id: str) -> None:
        s = self._s
        s.busy = 0
        s.worker_id = worker_id.encode()[:199]

    def enter(self, job_id: str, slice_no: int, backend_pid: int, xact_start: datetime) -> None:
        s = self._s
        s.busy = 0
        ctypes.memmove(s.job, uuid.UUID(job_id).bytes, 16)
        s.slice_no = slice_no
        s.backend_pid = backend_pid
        s.xact_start_us = (xact_start - EPOCH) // MICROSECOND
        s.target = self._target
        s.busy = 1

    def leave(self) -> None:
        self._s.busy = 0


class Slots:
    """A pool's slots, one per worker index. ``ctx``: the pool's multiprocessing context."""

    def __init__(self, ctx: Any, n: int) -> None:
        self._table = ctx.RawArray(_Slot, n)

    def slot(self, index: int) -> Slot:
        return Slot(self._table, index)

    def worker_id(self, index: int) -> str | None:
        return self._table[index].worker_id.decode(errors="replace") or None

    def in_flight(self, index: int) -> InFlight | None:
        """The batch the (dead) worker of ``index`` was in, or None."""
        s = self._table[index]
        if not s.busy:
            return None
        return InFlight(s.worker_id.decode(errors="replace"), str(uuid.UUID(bytes=bytes(s.job))), s.slice_no,
                        s.backend_pid, EPOCH + s.xact_start_us * MICROSECOND, s.target)

    def clear(self, index: int) -> None:
        s = self._table[index]
        s.busy = 0
        s.worker_id = b""
