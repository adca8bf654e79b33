"""What `tidegate status` shows: per job its state, counts, checkpoint, rate and ETA."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection

from tidegate.worker import kinds, store


def job_rows(conn: Connection, job_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Status rows (newest first), with the facts each job kind adds (``add_details``)."""
    now = datetime.now(UTC)
    out = []
    for r in store.job_status(conn, job_id, limit):
        status = r["status"] or r["queue_status"]
        processed = r["processed_count"] or 0
        rate = eta = None
        if r["started_at"] and processed:
            end = r["finished_at"] or now
            seconds = max((end - r["started_at"]).total_seconds(), 1e-6)
            rate = processed / seconds
            remaining = (r["total_estimate"] or 0) - processed
            if status == "running" and rate > 0 and remaining > 0:
                eta = remaining / rate
        out.append(
            {
                "job_id": str(r["job_id"]),
                "type": r["type"],
                "queue": r["queue"],
                "status": status,
                "reason": r["status_reason"],
                "by": r["status_by"],
                "owner": r["owner"] or (r["params"] or {}).get("owner"),
                "enqueued_by": r["enqueued_by"],  # the login role that queued it, recorded by the database
                "processed_count": processed,
                "error_count": r["error_count"] or 0,
                "total_estimate": r["total_estimate"],
                "last_checkpoint": r["last_checkpoint"],
                "range": [r["from_key"], r["to_key"]] if r["from_key"] else None,
                "batch_size": r["batch_size"],
                "concurrency": r["concurrency"],
                "slices": r["slices"],
                "slices_done": r["slices_done"],
                "slices_in_flight": r["slices_in_flight"],
                "attempts": r["attempts"],
                "max_attempts": r["max_attempts"],
                "rows_per_second": round(rate, 1) if rate is not None else None,
                "eta_seconds": round(eta) if eta is not None else None,
                "last_error": r["last_error"] or r["queue_error"],
                # which health gate holds the job back, and since when (only while it is active)
                "held_by": r["held_by"] if status in ("pending", "running") else None,
                "held_since": r["held_since"].isoformat() if r["held_since"] and status in ("pending", "running")
                else None,
                "max_rows_per_second": r["max_rows_per_second"],
                "sleep_between_batches": r["sleep_between_batches"],
                "target_batch_seconds": r["target_batch_seconds"],
                "row_limit": r["row_limit"],
                "created_at": r["created_at"].isoformat(),
                "started_at": r["started_at"].isoformat() if r["started_at"] else None,
                "finished_at": r["finished_at"].isoformat() if r["finished_at"] else None,
            }
        )
    return add_details(conn, out)


def add_details(conn: Connection, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each job kind may add facts of its own (``JobKind.details(conn, job_ids) -> {job_id: {...}}``): an archive
    job its streams and events moved. Added per row as ``details``, with the rate of each count."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_type.setdefault(r["type"], []).append(r)
    registry = kinds.kinds()
    for type_, group in by_type.items():
        kind = registry.get(type_)
        found = kind.details(conn, [r["job_id"] for r in group]) if kind is not None else {}
        for r in (r for r in group if r["job_id"] in found):  # a kind that adds nothing adds no key
            r["details"] = found[r["job_id"]]
            if r["details"] and r["rows_per_second"] and r["processed_count"]:
                seconds = r["processed_count"] / r["rows_per_second"]
                r["details_per_second"] = {k: round(v / seconds, 1) for k, v in r["details"].items()}
    return rows


def human_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def render_table(rows: list[dict[str, Any]]) -> str:
    header = ("JOB", "TYPE", "ENQUEUED BY", "STATUS", "PROCESSED", "ERRORS", "PROGRESS", "ROWS/S", "ETA", "CHECKPOINT",
              "NOTE")
    lines = [header]
    for r in rows:
        total = r["total_estimate"]
        progress = "-"
        if total:
            progress = f"{min(100.0, 100.0 * r['processed_count'] / total):.1f}%"
        if r["status"] == "done":
            progress = "100%"
        note = r["reason"] or ""
        if r["status"] == "failed" and r["last_error"]:
            note = r["last_error"]
        if r["held_by"]:
            note = f"held by gate {r['held_by']} since {r['held_since'][:19].replace('T', ' ')}. {note}"
        if r["slices"]:
            note = f"slices {r['slices_done']}/{r['slices']} done, {r['slices_in_flight']} in flight. {note}"
        if r.get("details"):
            rates = r.get("details_per_second") or {}
            facts = ", ".join(f"{k.replace('_', ' ')} {v:,}" + (f" ({rates[k]:,.0f}/s)" if rates.get(k) else "")
                              for k, v in r["details"].items())
            note = f"{facts}. {note}"
        lines.append(
            (
                r["job_id"][:8],
                r["type"],
                r["enqueued_by"] or "-",
                r["status"],
                str(r["processed_count"]),
                str(r["error_count"]),
                progress,
                f"{r['rows_per_second']:.0f}" if r["rows_per_second"] else "-",
                human_seconds(r["eta_seconds"]),
                (r["last_checkpoint"] or "-")[:25],
                note.strip()[:120],
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines)
