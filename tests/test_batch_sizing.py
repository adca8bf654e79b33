"""The time-boxed batch on its own: worker.throttle.TimeBox driven by a simulated clock.

A simulated source gives each step its time (the rows' costs x noise, plus a fixed cost per
statement), so the sizing's behaviour over many batches is checked exactly and the same way on
every run. The same loop runs for real in Worker._steps (tests/test_throttle.py drives that one).
"""

from __future__ import annotations

import math
import random

from tidegate.worker.store import Knobs
from tidegate.worker.throttle import TimeBox

TARGET = 0.25
ADAPTIVE = Knobs(batch_size=1000, concurrency=1, target_batch_seconds=TARGET, min_batch_size=10, max_batch_size=50_000)


def _batches(cost, batches: int, noise: float = 0.0, knobs: Knobs = ADAPTIVE, per_step: float = 0.0005,
             tail: float = 0.004, seed: int = 7) -> list[tuple[int, float, int]]:
    """(rows, seconds, steps) of each batch; ``cost(row)`` is the seconds of the source row at that position."""
    rng = random.Random(seed)
    row, estimate, done = 0, None, []
    for _ in range(batches):
        box = TimeBox(knobs, estimate, knobs.max_batch_size or 100_000, tail)
        elapsed, rows, step = 0.001, 0, box.first_step()
        while step:
            seconds = (per_step + sum(cost(r) for r in range(row, row + step))) * math.exp(rng.gauss(0, noise))
            elapsed += seconds
            row += step
            rows += step
            step = box.next_step(step, seconds, elapsed)
        done.append((rows, elapsed + tail, box.steps))
        estimate = box.estimate()
    return done


def _within(batches: list[tuple[int, float, int]], share: float) -> float:
    return sum(abs(s - TARGET) <= share * TARGET for _, s, _ in batches) / len(batches)


def test_a_batch_fills_its_target_whatever_the_first_estimate():
    for first in (1, 250, 50_000):  # far too small, right, far too large
        box = TimeBox(ADAPTIVE, first, 50_000)
        assert 1 <= box.first_step() <= max(1, first // 12) + 1
    done = _batches(lambda r: 0.001, 30)  # 1 ms a row: 250 rows fill the target
    assert all(abs(s - TARGET) <= 0.1 * TARGET for _, s, _ in done[1:])
    assert all(200 <= rows <= 260 for rows, _, _ in done[1:])


def test_the_estimate_settles_on_the_rows_that_fill_the_target_and_stays_within_min_and_max():
    box = TimeBox(ADAPTIVE, 250, 50_000)
    for _ in range(20):
        box.next_step(25, 0.025, 0.0)  # 1 ms a row
    assert box.estimate() == 250
    tiny = TimeBox(ADAPTIVE, 250, 50_000)
    tiny.next_step(1, 10.0, 0.0)
    assert tiny.estimate() == 10  # min_batch_size
    huge = TimeBox(ADAPTIVE, 250, 50_000)
    for _ in range(30):
        huge.next_step(1000, 1e-6, 0.0)
    assert huge.estimate() == 50_000  # max_batch_size


def test_the_batch_ends_at_its_cap_and_takes_its_floor_even_when_rows_are_slow():
    capped = TimeBox(ADAPTIVE, 10_000, 300)  # a canary with 300 rows left
    assert capped.first_step() == 300 and capped.next_step(300, 0.01, 0.01) == 0
    slow = TimeBox(ADAPTIVE, 24, 50_000)  # min_batch_size 10, and one row takes longer than the target
    assert slow.first_step() == 2
    assert slow.next_step(2, 0.6, 0.6) == 8  # over time, but the floor of 10 rows is not reached
    assert slow.next_step(8, 2.4, 3.0) == 0


def test_a_step_never_asks_for_more_than_four_times_the_last():
    box = TimeBox(ADAPTIVE, 24, 50_000)
    assert box.first_step() == 2
    assert box.next_step(2, 1e-5, 1e-5) == 8


def test_noise_does_not_push_batches_off_target():
    done = _batches(lambda r: 0.0002, 300, noise=0.2)[3:]
    assert _within(done, 0.25) >= 0.95


def test_runs_of_heavy_rows_cost_next_to_nothing_at_their_edges():
    # blocks of 5,000 rows, every other one ten times heavier: the step that meets an edge is small
    # enough that the batch around it still ends near the target
    done = _batches(lambda r: 0.0002 * (10 if (r // 5_000) % 2 else 1), 400, noise=0.1)[3:]
    assert _within(done, 0.25) >= 0.9


def test_heavy_runs_shorter_than_a_batch_too():
    # chunks of 100 rows, 40% of them 3 to 10 times heavier, drawn at random: a batch straddles several
    weight = {c: (3 + random.Random(c).random() * 7 if random.Random(c + 1).random() < 0.4 else 1)
              for c in range(2_000)}
    done = _batches(lambda r: 0.0002 * weight[r // 100], 300, noise=0.1)[3:]
    assert _within(done, 0.25) >= 0.95
    assert sum(steps for _, _, steps in done) / len(done) < 15  # the price: about ten steps a batch
