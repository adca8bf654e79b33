"""Pace between batches: fixed sleep, a rows-per-second cap, and an adaptive batch size.

All inputs are the job's knobs as read at the start of each batch, so a change by
`tidegate set` or a plain UPDATE applies at the next batch.
"""

from __future__ import annotations

from dataclasses import replace

from tidegate.worker.knobs import KNOBS, MAX_BATCH
from tidegate.worker.store import Knobs

MAX_PAUSE = 86_400.0  # seconds a slice ever waits between batches: a slower pace is a pause, not a wait
# Adaptive sizing. With a target, a batch is time-boxed: it runs in steps (calls of the kind's
# process, all in the batch's one transaction), each sized from the cost per row the steps before
# it measured, until the target is nearly spent. A run of heavy rows shows in the step that meets
# it, not a batch later, so the batch ends near its target whatever its rows cost.
STEP_SHARE = 1 / 12  # a step is planned to take at most this share of the target...
FILL = 0.5  # ...and at most this share of the time the batch has left
DONE_WITHIN = 0.08  # the batch ends once less than this share of the target is left
SMOOTHING = 0.5  # weight of the last step in the moving average of seconds per row
GROWTH = 4  # a step asks for at most this many times the rows of the one before


def sane(knobs: Knobs) -> Knobs:
    """The knobs pulled into their ranges (worker/knobs.py). The CHECK constraints of migration 0009
    refuse anything else, so this is defence in depth: a value that slipped past (a database not
    migrated yet) makes a job slower or faster, never a worker crash. NaN means: the knob's default."""

    def clamp(name: str, fallback: object = None) -> object:
        value = getattr(knobs, name)
        return None if value is None else KNOBS[name].clamp(value, fallback)

    return replace(
        knobs, batch_size=clamp("batch_size", 500), concurrency=clamp("concurrency", 1),
        max_rows_per_second=clamp("max_rows_per_second"), sleep_between_batches=clamp("sleep_between_batches", 0.0),
        target_batch_seconds=clamp("target_batch_seconds", 1.0), min_batch_size=clamp("min_batch_size"),
        max_batch_size=clamp("max_batch_size"), row_limit=clamp("row_limit"),
    )


def batch_size(knobs: Knobs, current: int | None, processed_so_far: int) -> int:
    """How many rows the next batch may take: its fixed size, or for an adaptive job the most it
    may take (max_batch_size); capped by a canary row limit."""
    knobs = sane(knobs)
    size = knobs.batch_size
    if knobs.target_batch_seconds:
        size = knobs.max_batch_size or MAX_BATCH
        if current is not None and current < (knobs.min_batch_size or 1):  # split after a timeout
            size = current
    if knobs.row_limit is not None:
        size = min(size, max(0, knobs.row_limit - processed_so_far))
    return size


class TimeBox:
    """The steps of one adaptive batch. ``estimate`` is the slice's rows that fit in the target (its
    ``batch_size_now``: the moving average of seconds per row, as target / cost), ``cap`` the most
    rows the batch may take, ``tail`` the seconds expected after the last step (bookkeeping, commit).

    Call :meth:`first_step`, run the step, then :meth:`next_step` with what it did, until it says 0.
    """

    def __init__(self, knobs: Knobs, estimate: int | None, cap: int, tail: float = 0.0) -> None:
        knobs = sane(knobs)
        assert knobs.target_batch_seconds
        self.target = knobs.target_batch_seconds
        self.knobs = knobs
        self.cost = self.target / max(1, estimate or knobs.batch_size)
        self.cap = cap
        self.floor = min(knobs.min_batch_size or 1, cap)
        self.tail = tail
        self.rows = 0
        self.steps = 0
        self.asked = 0  # rows of the last step asked for (a step that times out says how many were too many)

    def first_step(self) -> int:
        return self._rows(STEP_SHARE * self.target / self.cost, growth_from=None)

    def next_step(self, rows: int, seconds: float, elapsed: float) -> int:
        """After a step of ``rows`` that took ``seconds``, ``elapsed`` into the batch: the rows of
        the next step, or 0 to end the batch."""
        self.rows += rows
        self.steps += 1
        step_cost = max(seconds, 1e-6) / max(rows, 1)
        # plan by the dearer of the last step and the moving average: a heavy run starting is believed
        # at once, a light one after a step or two
        self.cost = max(step_cost, self.cost ** (1 - SMOOTHING) * step_cost ** SMOOTHING)
        left = self.target - elapsed - self.tail
        if self.rows >= self.cap or (self.rows >= self.floor and left < DONE_WITHIN * self.target):
            return 0
        if self.rows < self.floor and left <= 0:
            return self._rows(self.floor - self.rows, growth_from=None)
        return self._rows(min(FILL * left, STEP_SHARE * self.target) / self.cost, growth_from=rows)

    def _rows(self, n: float, growth_from: int | None) -> int:
        if growth_from is not None:
            n = min(n, GROWTH * max(growth_from, 1))
        self.asked = max(1, min(round(n), self.cap - self.rows))
        return self.asked

    def estimate(self) -> int:
        """The slice's new estimate of the rows that fit in the target, within min/max."""
        return max(self.knobs.min_batch_size or 1,
                   min(round(self.target / self.cost) or 1, self.knobs.max_batch_size or MAX_BATCH))


def statement_timeout_ms(knobs: Knobs) -> int | None:
    """A step running four times over its batch's target is cut short and the batch retried with a
    smaller estimate (never failed for it)."""
    knobs = sane(knobs)
    return int(max(1.0, 4 * knobs.target_batch_seconds) * 1000) if knobs.target_batch_seconds else None


def pause_after(knobs: Knobs, pace_wait: float) -> float:
    """Seconds to wait before this slice's next batch (at most MAX_PAUSE): the job's sleep between
    batches, or longer while the job's rate cap says so. ``pace_wait`` is what the batch's own
    ``advance_job`` returned: the job-wide reservation of its cap (migration 0013), moved on by every
    batch of every slice, so the cap holds for the job whatever number of slices or workers run it."""
    knobs = sane(knobs)
    wait = knobs.sleep_between_batches
    if knobs.max_rows_per_second and pace_wait == pace_wait:  # not NaN
        wait = max(wait, pace_wait)
    return min(MAX_PAUSE, max(0.0, wait))
