"""The adaptive batch-size rule on its own: a pure function of the last batch, no clock, no database.

A simulated source gives each batch its time (rows x seconds per row x noise), so the rule's
behaviour over many batches is checked exactly and the same way on every run.
"""

from __future__ import annotations

import math
import random

from worker.store import Knobs
from worker.throttle import next_batch_size

TARGET = 0.25
ADAPTIVE = Knobs(batch_size=1000, concurrency=1, target_batch_seconds=TARGET, min_batch_size=10, max_batch_size=50_000)


def _run(cost, batches: int, noise: float = 0.0, seed: int = 7, size: int = 1000) -> list[tuple[int, float]]:
    """(rows, seconds) of each batch; ``cost(row)`` is the seconds of the source row at that position."""
    rng = random.Random(seed)
    row, done = 0, []
    for _ in range(batches):
        seconds = sum(cost(r) for r in range(row, row + size)) * math.exp(rng.gauss(0, noise))
        done.append((size, seconds))
        row += size
        size = next_batch_size(ADAPTIVE, size, size, seconds) or size
    return done


def _within(batches: list[tuple[int, float]], share: float) -> float:
    return sum(abs(s - TARGET) <= share * TARGET for _, s in batches) / len(batches)


def test_a_batch_a_little_off_target_moves_the_size_part_of_the_way():
    assert next_batch_size(ADAPTIVE, 1000, 1000, 0.30) == round(1000 * (0.25 / 0.30) ** 0.3)  # 947, not 833
    assert next_batch_size(ADAPTIVE, 1000, 1000, 0.20) == round(1000 * (0.25 / 0.20) ** 0.3)  # 1069, not 1250
    assert next_batch_size(ADAPTIVE, 1000, 1000, 0.25) == 1000


def test_a_batch_far_off_target_is_followed_at_once_within_the_step_bounds():
    assert next_batch_size(ADAPTIVE, 1000, 1000, 0.75) == 333  # three times slower: a third
    assert next_batch_size(ADAPTIVE, 1000, 1000, 2.5) == 125  # ten times slower: an eighth at most
    assert next_batch_size(ADAPTIVE, 1000, 1000, 0.025) == 2000  # ten times faster: doubles at most


def test_the_size_stays_within_min_and_max_and_a_short_page_says_nothing():
    assert next_batch_size(ADAPTIVE, 12, 12, 2.0) == 10
    assert next_batch_size(ADAPTIVE, 40_000, 40_000, 0.01) == 50_000
    assert next_batch_size(ADAPTIVE, 1000, 400, 0.01) is None  # the slice's last page
    assert next_batch_size(Knobs(batch_size=1000, concurrency=1), 1000, 1000, 9.0) is None  # not adaptive


def test_rows_past_the_asked_size_count_toward_seconds_per_row():
    # 1,500 rows (ties on the last key) in the target time: each row is cheaper than 1,000 would say
    assert next_batch_size(ADAPTIVE, 1000, 1500, 0.25) == round(1000 * 1.5 ** 0.3)


def test_it_settles_on_the_rows_that_fill_the_target():
    done = _run(lambda r: 0.001, 40)  # 1 ms a row: 250 rows fill the target
    assert all(abs(rows - 250) <= 3 for rows, _ in done[-10:])


def test_noise_is_averaged_out_rather_than_chased():
    done = _run(lambda r: 0.0002, 400, noise=0.15)[10:]
    chase = []  # the same noise under the former rule: scale by target/actual, last batch only
    rng, size = random.Random(7), 1000
    for _ in range(400):
        seconds = size * 0.0002 * math.exp(rng.gauss(0, 0.15))
        chase.append((size, seconds))
        size = max(10, min(int(size * min(2.0, max(0.5, TARGET / seconds))), 50_000))
    assert _within(done, 0.25) >= 0.8
    assert _within(done, 0.25) > _within(chase[10:], 0.25) + 0.05


def test_a_run_of_heavy_rows_costs_a_few_batches_at_each_edge():
    # blocks of 20,000 rows, every other one ten times heavier: after each edge the size is right
    # again within three batches
    done = _run(lambda r: 0.0002 * (10 if (r // 20_000) % 2 else 1), 200)
    off = [abs(s - TARGET) > 0.25 * TARGET for _, s in done]
    runs, current = [], 0
    for miss in off:
        current = current + 1 if miss else 0
        runs.append(current)
    assert max(runs) <= 3
    assert _within(done, 0.25) >= 0.85
