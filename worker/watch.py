"""`tidegate status --watch`: a live table (rich) with progress bars, recent rate and ETA.

The rate shown is rows per second over the last minute, computed from the
watcher's own samples of processed_count (one per refresh), so it reflects what
the pool does now rather than the average since the job started; until a
minute has passed it covers the time since the watcher started.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from tidegate.worker.status import human_seconds, short_ids

WINDOW = 60.0
STYLE = {"running": "green", "pending": "cyan", "paused": "yellow", "failed": "red", "cancelled": "magenta",
         "done": "dim"}


class RecentRate:
    def __init__(self) -> None:
        self.samples: dict[str, deque[tuple[float, int]]] = {}

    def update(self, job_id: str, processed: int, now: float) -> float | None:
        series = self.samples.setdefault(job_id, deque())
        series.append((now, processed))
        while len(series) > 2 and now - series[0][0] > WINDOW:
            series.popleft()
        (t0, p0), (t1, p1) = series[0], series[-1]
        return (p1 - p0) / (t1 - t0) if t1 > t0 else None


def render(rows: list[dict[str, Any]], rates: RecentRate, now: float) -> Table:
    table = Table(title=f"tidegate — {time.strftime('%H:%M:%S')}", expand=True)
    # the id and the numbers are never cut (an id is what an operator types next); the type, the header of
    # the rate and the note wrap, the note taking what width is left (at least 16 columns)
    ids = short_ids([r["job_id"] for r in rows])
    table.add_column("job", no_wrap=True, min_width=max(map(len, ids.values()), default=8))
    table.add_column("type", overflow="fold", max_width=16)
    table.add_column("status", no_wrap=True, min_width=9)
    table.add_column("progress", min_width=10, max_width=26)
    for column in ("processed", "errors", "rows/s (1m)", "ETA"):
        table.add_column(column, justify="right", no_wrap=column != "rows/s (1m)", max_width=11)
    table.add_column("note", ratio=1, min_width=16, overflow="fold")
    for r in rows:
        total = r["total_estimate"] or 0
        done = r["processed_count"]
        rate = rates.update(r["job_id"], done, now)
        eta = (total - done) / rate if rate and total > done and r["status"] == "running" else None
        bar = ProgressBar(total=max(total, 1), completed=min(done, total) if total else 0)
        if r["status"] == "done":
            bar = ProgressBar(total=1, completed=1)
        note = r["reason"] or ""
        if r["by"] and r["status"] == "paused":
            note = f"{note} (by {r['by']})"
        if r["status"] == "failed":
            note = r["last_error"] or note
        table.add_row(
            ids[r["job_id"]], r["type"], Text(r["status"], style=STYLE.get(r["status"], "")),
            Group(bar, Text(f"{100.0 * done / total:.1f}%" if total else "-")), f"{done:,}",
            f"{r['error_count']:,}", f"{rate:,.0f}" if rate is not None else "-", human_seconds(eta), note,
        )
    return table


def watch(fetch, interval: float) -> None:  # type: ignore[no-untyped-def]
    rates = RecentRate()
    with Live(render(fetch(), rates, time.monotonic()), auto_refresh=False, screen=False) as live:
        while True:
            time.sleep(interval)
            live.update(render(fetch(), rates, time.monotonic()), refresh=True)
