"""Pace between batches: fixed sleep, a rows-per-second cap, and an adaptive batch size.

All inputs are the job's knobs as read at the start of each batch, so a change by
`tidegate set` or a plain UPDATE applies at the next batch.
"""

from __future__ import annotations

from worker.store import Knobs

MAX_BATCH = 100_000
# Adaptive sizing. The slice's batch_size_now is its estimate of seconds per row, expressed as the
# rows that fit in the target (estimate = target / size), so the estimate needs no column of its own.
SMOOTHING = 0.3  # weight of the last batch in the moving average of seconds per row
JUMP = 2.0  # a batch this many times off its target is a change of rows, not noise: follow it at once
STEP = (1 / 8, 2.0)  # a step at most divides the batch by 8 (a slow batch is a fact) or doubles it


def batch_size(knobs: Knobs, current: int | None, processed_so_far: int) -> int:
    """How many rows the next batch asks for: adaptive size if any, capped by a canary row limit."""
    size = knobs.batch_size
    if knobs.target_batch_seconds:  # adaptive: the slice's own size (below min only after a timeout split)
        size = min(current or size, knobs.max_batch_size or MAX_BATCH)
    if knobs.row_limit is not None:
        size = min(size, max(0, knobs.row_limit - processed_so_far))
    return size


def next_batch_size(knobs: Knobs, size: int, rows: int, seconds: float) -> int | None:
    """Toward target_batch_seconds: ``target / estimated seconds per row``, within min/max.

    The estimate is an exponentially weighted moving average of seconds per row (geometric, as
    batch times vary by factors), kept as the size itself: the last batch, which asked for
    ``size`` rows and took ``seconds``, moves it by (target / seconds) ** SMOOTHING, which
    averages noise out over the last few batches. A batch off by more than JUMP times says the
    rows changed (a run of big rows starts or ends): the size then follows it fully, within STEP.
    """
    if not knobs.target_batch_seconds or rows < size or rows <= 0:  # a short last page says nothing
        return None
    ratio = knobs.target_batch_seconds * rows / (max(seconds, 1e-3) * size)  # rows > size: ties on the last key
    if 1 / JUMP <= ratio <= JUMP:
        ratio **= SMOOTHING
    new = size * min(STEP[1], max(STEP[0], ratio))
    return max(knobs.min_batch_size or 1, min(round(new) or 1, knobs.max_batch_size or MAX_BATCH))


def statement_timeout_ms(knobs: Knobs) -> int | None:
    """A batch running four times over its target is cut short, then split (never failed for it)."""
    return int(max(1.0, 4 * knobs.target_batch_seconds) * 1000) if knobs.target_batch_seconds else None


def pause_after(knobs: Knobs, rows: int, seconds: float) -> float:
    """Seconds to wait before this slice's next batch."""
    wait = knobs.sleep_between_batches
    if knobs.max_rows_per_second:
        share = knobs.max_rows_per_second / max(1, knobs.concurrency)  # the cap is per job, across its slices
        wait = max(wait, rows / share - seconds)
    return max(0.0, wait)
