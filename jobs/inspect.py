"""Look before and after a backfill: a read-only dry run, and the runbook's parity checks.

Both only read. The dry run plans the job exactly as a worker would, inside a READ ONLY
transaction that is rolled back, so it works as a role with SELECT privileges alone.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, text

from tidegate.jobs import filters, handlers
from tidegate.jobs.backfill_range import ROWS, BackfillRange, resolve_target
from tidegate.worker import identifiers, keys
from tidegate.worker.errors import NotFound
from tidegate.worker.sql import Fragment, load, render

SQL = load(__package__, "inspect.sql")


def read_only(conn: Connection) -> None:
    """The transaction reads one snapshot and writes nothing (before its first statement)."""
    conn.execute(text(SQL["read_only"]))


def dry_run(conn: Connection, payload: dict[str, Any], sample: int = 5) -> dict[str, Any]:
    """What the job would do: rows, batches, slices, a sample of keys and the time at its pace."""
    read_only(conn)
    plan = BackfillRange().plan(conn, payload)
    p = plan.params
    target = resolve_target(conn, p["source"], p["key"])
    idents = {"source": target.source, "key": target.key.ident}
    where = filters.compile_filters(conn, target.source, p.get("where") or [])
    lo, hi = plan.from_key, plan.to_key
    first = [keys.encode(r.k) for r in conn.execute(where.into(SQL["first_keys"], **idents),
                                                    {"lo": lo, "hi": hi, "n": sample, **where.params})]
    # one batch read (and transformed, for a Python handler) against the clock: the pace of the reads
    started = time.monotonic()
    upper = conn.execute(where.into(SQL["one_batch"], **idents),
                         {"lo": lo, "hi": hi, "n": plan.batch_size, **where.params}).scalar()
    if upper is not None:
        rows = conn.execute(where.into(ROWS, **idents),
                            {"lo": keys.before(lo), "hi": upper, **where.params}).mappings().all()
        resolved = handlers.resolve(p["handler"]) if "handler" in p else None
        if resolved is not None and resolved.handler is not None:
            for row in rows:
                try:
                    resolved.handler.transform(row)
                except Exception:  # a bad item costs its time like any other  # noqa: BLE001
                    pass
    batch_seconds = time.monotonic() - started
    batches = math.ceil(plan.total_estimate / plan.batch_size) if plan.total_estimate else 0
    per_slice = math.ceil(batches / max(1, len(plan.slices)))
    seconds = per_slice * (batch_seconds + (p.get("sleep_between_batches") or 0.0))
    if p.get("max_rows_per_second"):
        seconds = max(seconds, plan.total_estimate / p["max_rows_per_second"])
    conn.rollback()
    return {"source": p["source"], "key": p["key"], "range": [keys.encode(lo), keys.encode(hi)],
            "rows": plan.total_estimate, "batches": batches, "batch_size": plan.batch_size,
            "slices": len(plan.slices), "sample_keys": first, "seconds_per_batch_read": round(batch_seconds, 4),
            "estimated_seconds": round(seconds, 1), "row_limit": p.get("row_limit"),
            "note": "estimated from one timed batch read; the handler's writes are not timed"}


@dataclass
class Report:
    job_id: str
    checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c["ok"] for c in self.checks)

    def add(self, name: str, ok: bool, detail: str, *, checked: bool = True) -> None:
        """``checked=False``: nothing to check (the detail says why); it passes, and is shown as such."""
        self.checks.append({"check": name, "ok": ok, "detail": detail, **({} if checked else {"checked": False})})


def verify(conn: Connection, job_id: str, sample: int = 50) -> Report:
    """The runbook's parity checks on what a job has processed so far (every slice up to its cursor)."""
    job = conn.execute(text(SQL["job"]), {"job_id": job_id}).first()
    if job is None:
        raise NotFound(f"job {job_id} has not been planned yet: nothing to verify")
    p = job.params
    if job.kind in ("archive_range", "unarchive_range"):
        from tidegate.jobs.archive import report as archive_report  # the archive's own checks

        report = Report(job_id)
        for name, ok, detail, checked in archive_report.verify(conn, job_id, job.kind, p, job.processed_count):
            report.add(name, ok, detail, checked=checked)
        return report
    target = resolve_target(conn, p["source"], p["key"])
    idents = {"source": target.source, "key": target.key.ident}
    where = filters.compile_filters(conn, target.source, p.get("where") or [])
    report = Report(job_id)
    spans = [(keys.decode(job.key_type, s.start_key), keys.decode(job.key_type, s.checkpoint))
             for s in conn.execute(text(SQL["slices"]), {"job_id": job_id})]
    source_rows = sum(int(conn.execute(where.into(SQL["count_done"], **idents),
                                       {"lo": a, "hi": b, **where.params}).scalar_one())
                      for a, b in spans)
    report.add("source rows vs processed_count", source_rows == job.processed_count,
               f"{source_rows} source rows in the processed ranges, processed_count {job.processed_count}")

    resolved = handlers.resolve(p["handler"]) if "handler" in p else None
    handler = resolved.handler if resolved is not None else None
    spec = handler.derived if handler is not None else None
    if spec is None:
        report.add("derived keys unique", True, "the handler declares no derived table: not checked")
        report.add("sample recomputed", True, "the handler declares no derived table: not checked")
        return report
    table = identifiers.table(conn, spec["table"], what="derived table")
    cols = [identifiers.column(conn, table, c, what="derived key column").ident for c in spec["key"]]
    listed = Fragment(", ".join(f"{{c{i}}}" for i in range(len(cols))))  # {c0}, {c1}...: filled below
    dupes = int(conn.execute(render(SQL["duplicates"], cols=listed, table=table,
                                    **{f"c{i}": c for i, c in enumerate(cols)})).scalar_one())
    report.add("derived keys unique", dupes == 0,
               f"{dupes} duplicated ({', '.join(spec['key'])}) in {table.name}")

    failed = {r.item_key for r in conn.execute(text(SQL["failed_items"]), {"job_id": job_id})}
    percent = min(100.0, 100.0 * 4 * sample / max(1, job.processed_count))
    problems: list[str] = []
    checked = 0
    for a, b in spans:
        for row in conn.execute(where.into(SQL["sample"], **idents), {"percent": percent, "seed": 7, "lo": a, "hi": b,
                                                               "n": sample, **where.params}).mappings():
            if checked >= sample:
                break
            if handlers.item_key(row, p["item_key"]) in failed:
                continue  # a bad item: in etl_errors, not in the derived table
            checked += 1
            problems.extend(handler.check_row(conn, row))  # type: ignore[union-attr]
    report.add("sample recomputed", not problems,
               f"{checked} source rows recomputed, {len(problems)} mismatch(es)"
               + (": " + "; ".join(problems[:5]) if problems else ""))
    return report
