"""What `tidegate status` shows: per job its state, counts, checkpoint, rate and ETA."""

from __future__ import annotations

import textwrap
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


SHORT_ID = 8  # characters of a job id the tables show: a prefix every command takes


def short_ids(job_ids: list[str]) -> dict[str, str]:
    """Each id's shortest prefix of at least SHORT_ID characters that no other id shown shares (so it can be
    typed back to any command)."""
    out = {}
    for job_id in job_ids:
        n = SHORT_ID
        while n < len(job_id) and any(o != job_id and o.startswith(job_id[:n]) for o in job_ids):
            n += 1
        out[job_id] = job_id[:n]
    return out


HEADER = ("JOB", "TYPE", "ENQUEUED BY", "STATUS", "PROCESSED", "ERRORS", "PROGRESS", "ROWS/S", "ETA", "CHECKPOINT",
          "NOTE")
WRAPPED = (9, 10)  # CHECKPOINT and NOTE: wrapped at word boundaries to the width, never cut
MIN_NOTE = 24


def render_table(rows: list[dict[str, Any]], width: int | None = None, *, wide: bool = False) -> str:
    """The status table. Nothing is cut: ``wide`` shows whole job ids, and each job on one line; else the ids
    are the shortest unique prefixes (SHORT_ID characters or more) and, given a ``width`` (the terminal's),
    the checkpoint and the note wrap at word boundaries onto more lines (a word longer than its column
    stays whole: the line is then wider than the terminal); without one, each job is one line."""
    ids = {r["job_id"]: r["job_id"] for r in rows} if wide else short_ids([r["job_id"] for r in rows])
    table = [_cells(r, ids[r["job_id"]]) for r in rows]
    widths = [max(len(line[i]) for line in [HEADER, *table]) for i in range(len(HEADER))]
    if width is not None and not wide:
        fixed = sum(widths[i] + 2 for i in range(len(HEADER)) if i not in WRAPPED)
        if width - fixed - 2 < MIN_NOTE + min(widths[9], 2 * MIN_NOTE):  # too narrow for columns: a block a job
            return "\n".join(_block(line, width) for line in table)
        room = width - fixed - 2
        words = [len(w) for line in table for w in line[9].split()] or [0]
        checkpoint = min(widths[9], max(len(HEADER[9]), max(words), room // 2))
        widths[9], widths[10] = checkpoint, max(room - checkpoint, MIN_NOTE, len(HEADER[10]))
    out = []
    for line in [HEADER, *table]:
        columns = [textwrap.wrap(cell, widths[i], break_long_words=False, break_on_hyphens=False) or [""]
                   if i in WRAPPED else [cell] for i, cell in enumerate(line)]
        for k in range(max(map(len, columns))):
            parts = [(col[k] if k < len(col) else "").ljust(w) for col, w in zip(columns, widths, strict=True)]
            out.append("  ".join(parts).rstrip())
    return "\n".join(out)


def _block(cells: tuple[str, ...], width: int) -> str:
    """One job for a narrow terminal: its id, type, status and progress, then its counts, checkpoint and note,
    each wrapped at word boundaries under the first line."""
    job_id, type_, by, status, processed, errors, progress, rate, eta, checkpoint, note = cells
    facts = [f"{job_id}  {type_}  {status}  {progress}",
             f"processed {processed}  errors {errors}  rows/s {rate}  ETA {eta}  enqueued by {by}",
             f"checkpoint {checkpoint}", *([f"note {note}"] if note else [])]
    return "\n".join(textwrap.fill(fact, width, initial_indent="" if i == 0 else "  ", subsequent_indent="    ",
                                    break_long_words=False, break_on_hyphens=False)
                      for i, fact in enumerate(facts))


def _cells(r: dict[str, Any], job_id: str) -> tuple[str, ...]:
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
    return (job_id, r["type"], r["enqueued_by"] or "-", r["status"], str(r["processed_count"]),
            str(r["error_count"]), progress, f"{r['rows_per_second']:.0f}" if r["rows_per_second"] else "-",
            human_seconds(r["eta_seconds"]), r["last_checkpoint"] or "-", " ".join(note.split()))
