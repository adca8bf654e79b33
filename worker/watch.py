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

from rich import box
from rich.console import Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from tidegate.worker.status import SHORT_ID, human_seconds, short_ids

WINDOW = 60.0
BAR = 10
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


def count(n: float) -> str:
    """A count in at most 6 characters: 9,999, 12.3k, 123k, 1.2M..."""
    if n < 10_000:
        return f"{n:,.0f}"
    for divisor, unit in ((1e3, "k"), (1e6, "M"), (1e9, "G"), (1e12, "T")):
        value = n / divisor
        shown = f"{value:.1f}" if value < 99.95 else f"{value:.0f}"
        if float(shown) < 999.5 or unit == "T":
            return shown + unit
    raise AssertionError("unreachable")


NARROW = 90  # below this width the type and the progress bar are left out: the id and the note keep their room


def render(rows: list[dict[str, Any]], rates: RecentRate, now: float, width: int = 200) -> Table:
    narrow = width < NARROW
    table = Table(title=f"tidegate — {time.strftime('%H:%M:%S')}", expand=True, box=box.SIMPLE_HEAD,
                  show_edge=False, pad_edge=False, padding=(0, 1), collapse_padding=True)
    # fixed widths but the type's and the note's: the id is never cut (an operator types it next), counts are
    # short (123.5M), the type wraps, and the note wraps at words in what is left (at 100 columns, 20)
    ids = short_ids([r["job_id"] for r in rows])
    table.add_column("job", no_wrap=True, width=max(map(len, ids.values()), default=SHORT_ID))
    if not narrow:
        table.add_column("type", overflow="fold", max_width=14)
    table.add_column("status", no_wrap=True, width=9)
    if not narrow:
        table.add_column("progress", no_wrap=True, width=BAR)
    for column, width in (("done", 7), ("errors", 6), ("rows/s", 6), ("ETA", 6)):
        table.add_column(column, justify="right", no_wrap=True, width=width)
    table.add_column("note", ratio=1, overflow="fold")
    for r in rows:
        total = r["total_estimate"] or 0
        done = r["processed_count"]
        rate = rates.update(r["job_id"], done, now)
        eta = (total - done) / rate if rate and total > done and r["status"] == "running" else None
        bar = ProgressBar(total=max(total, 1), completed=min(done, total) if total else 0, width=BAR)
        if r["status"] == "done":
            bar = ProgressBar(total=1, completed=1, width=BAR)
        note = r["reason"] or ""
        if r["by"] and r["status"] == "paused":
            note = f"{note} (by {r['by']})"
        if r["status"] == "failed":
            note = r["last_error"] or note
        progress = Group(bar, Text(f"{100.0 * done / total:.1f}%" if total else "-"))
        cells = [ids[r["job_id"]], r["type"], Text(r["status"], style=STYLE.get(r["status"], "")), progress,
                 count(done), count(r["error_count"]), count(rate) if rate is not None else "-", human_seconds(eta),
                 note]
        table.add_row(*(cells if not narrow else cells[:1] + cells[2:3] + cells[4:]))
    return table


def watch(fetch, interval: float) -> None:  # type: ignore[no-untyped-def]
    rates = RecentRate()
    with Live(auto_refresh=False, screen=False) as live:
        while True:
            live.update(render(fetch(), rates, time.monotonic(), live.console.width), refresh=True)
            time.sleep(interval)
