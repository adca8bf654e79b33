"""Look before and after a backfill: the dry run (a rehearsal), and the runbook's parity checks.

The dry run plans the job exactly as a worker would, then runs the real handler on a sample of the
range inside a transaction that is always rolled back (:func:`rehearse`); ``--sample 0`` only plans,
inside a READ ONLY transaction, so it works as a role with SELECT privileges alone (:func:`dry_run`).
The parity checks only read.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from tidegate.jobs import approved_sql, filters, handlers, sql_check
from tidegate.jobs.backfill_range import ROWS, BackfillRange, resolve_target
from tidegate.worker import identifiers, keys, store, trust
from tidegate.worker.db import first_line, is_outage, is_timeout
from tidegate.worker.errors import InvalidInput, NotFound, TidegateError
from tidegate.worker.kinds import Plan
from tidegate.worker.redact import error_text
from tidegate.worker.sql import Fragment, load, render

SQL = load(__package__, "inspect.sql")
log = logging.getLogger(__name__)


def read_only(conn: Connection) -> None:
    """The transaction reads one snapshot and writes nothing (before its first statement)."""
    conn.execute(text(SQL["read_only"]))


def dry_run(conn: Connection, payload: dict[str, Any], sample: int = 5) -> dict[str, Any]:
    """What the job would do, without running its handler: rows, batches, slices, the first keys and the
    time of one batch read at its pace (``--dry-run --sample 0``). Read-only: a role with SELECT alone runs it."""
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
    report = _plan_report(plan, first)
    per_slice = math.ceil(report["batches"] / max(1, len(plan.slices)))
    seconds = per_slice * (batch_seconds + (p.get("sleep_between_batches") or 0.0))
    if p.get("max_rows_per_second"):
        seconds = max(seconds, plan.total_estimate / p["max_rows_per_second"])
    conn.rollback()
    return {**report, "seconds_per_batch_read": round(batch_seconds, 4), "estimated_seconds": round(seconds, 1),
            "note": "estimated from one timed batch read; the handler's writes are not timed (--sample 0)"}


def _plan_report(plan: Plan, first: list[str]) -> dict[str, Any]:
    p = plan.params
    return {"source": p["source"], "key": p["key"], "range": [keys.encode(plan.from_key), keys.encode(plan.to_key)],
            "rows": plan.total_estimate, "batches": math.ceil(plan.total_estimate / plan.batch_size),
            "batch_size": plan.batch_size, "concurrency": plan.concurrency, "slices": len(plan.slices),
            "sample_keys": first, "row_limit": p.get("row_limit")}


# -- the rehearsal: the real handler on a sample, always rolled back ---------------------------------

DEFAULT_SAMPLE = 100
DEFAULT_DEADLINE = 60.0
HANG_GRACE = 5.0  # seconds after the deadline's cancel before a handler that did not come back is given up on
EXACT_SAMPLE_BELOW = 50_000  # rows of a range whose sample is picked exactly; above, from a block sample
MAX_FAILURES_SHOWN = 50
SHOWN_KEYS = 20  # of the sampled keys, in the report


class RehearsalStopped(TidegateError):
    """The dry run could not finish: nothing was written."""


class Deadline:
    """The rehearsal's time box, on a timer thread. At ``seconds`` it cancels the statement running on the
    rehearsal's connection (a protocol cancel request: no privilege, no second connection); a handler that
    has not come back ``HANG_GRACE`` seconds later (it hangs in Python, where nothing can be cancelled) is
    given up on through ``on_hang(message)``, which must end the process: the server then rolls the
    transaction back when the connection drops."""

    def __init__(self, conn: Connection, seconds: float, on_hang: Callable[[str], None] | None) -> None:
        self.seconds = seconds
        self.fired = False
        self._dbapi: Any = conn.connection.dbapi_connection
        self._timers = [threading.Timer(seconds, self._cancel)]
        if on_hang is not None:
            message = (f"dry run stopped: the handler did not come back {HANG_GRACE:g}s after the dry run's deadline"
                       f" of {seconds:g}s (it hangs outside the database); its transaction is rolled back as the"
                       " connection closes, nothing was written")
            self._timers.append(threading.Timer(seconds + HANG_GRACE, on_hang, (message,)))
        for timer in self._timers:
            timer.daemon = True
            timer.start()

    def _cancel(self) -> None:
        self.fired = True
        try:
            self._dbapi.cancel_safe(timeout=5.0)
        except Exception as err:  # the hang timer still ends it  # noqa: BLE001
            log.warning("dry run: could not cancel the statement in flight (%s)", first_line(err))

    def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()

    def stopped(self, err: BaseException | None = None) -> RehearsalStopped | None:
        """The error to raise when the deadline (or the statement timeout it sets) ended the rehearsal."""
        if self.fired or (err is not None and is_timeout(err)):
            return RehearsalStopped(f"dry run stopped: it ran past its deadline of {self.seconds:g}s (--deadline)"
                                    " and its statement was cancelled; nothing was written. Rehearse a smaller"
                                    " --sample, give a longer --deadline, or look at what the handler waits for")
        return None


def rehearse(conn: Connection, payload: dict[str, Any], sample: int = DEFAULT_SAMPLE,
             deadline: float = DEFAULT_DEADLINE, on_hang: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The dry run that rehearses: plan the job as a worker would (every check of a real run: the handler
    must be one the deployment loaded, a job's own SQL needs its enqueuer's sql-author role and passes the
    plan check, an approved statement must still be approved), then run the real handler on ``sample``
    rows spread over the range in one READ WRITE transaction that is always rolled back, and report rows
    read and written, the items that would fail, the time per row and the ETA of the whole range.

    Nothing is kept, even from a handler that commits: every transaction of the session but the rehearsal's
    is read-only, the rehearsal's COMMIT fails on a deferred foreign key that cannot hold, the transaction
    id is checked at the end, and the connection is closed, not returned to the pool. Effects outside the
    database (a message sent, a file written) and sequence values (nextval) are not rolled back, as in
    any rolled-back batch."""
    conn.execute(text(SQL["session_read_only"]))
    conn.commit()  # a SET only: nothing is written
    watch: Deadline | None = None
    try:
        conn.execute(text(SQL["read_write"]))
        xact = conn.execute(text(SQL["xact_id"])).scalar_one()
        conn.execute(text(SQL["guard_table"]))
        conn.execute(text(SQL["guard_row"]))
        store.local_statement_timeout(conn, max(1, int(deadline * 1000)))
        watch = Deadline(conn, deadline, on_hang)
        try:
            report = _rehearse(conn, payload, sample, watch)
        except InvalidInput:
            raise
        except Exception as err:
            stopped = watch.stopped(err)
            if stopped is not None:
                raise stopped from None
            if not _same_transaction(conn, xact):
                raise _ended() from None
            raise
        if not _same_transaction(conn, xact):  # (or the deadline's cancel hit this very check)
            raise watch.stopped() or _ended()
        return report
    finally:
        if watch is not None:
            watch.stop()
        try:
            conn.rollback()
        finally:
            conn.invalidate()  # the session (read-only default, any lock or setting a handler took) goes with it


def _same_transaction(conn: Connection, xact: str) -> bool:
    try:
        return conn.execute(text(SQL["xact_id_now"])).scalar() == xact
    except Exception:  # the transaction is broken or gone  # noqa: BLE001
        return False


def _ended() -> RehearsalStopped:
    return RehearsalStopped("dry run stopped: the handler ended the dry run's transaction (a COMMIT or ROLLBACK of its"
                            " own); its COMMIT failed on the dry run's guard and everything was rolled back, nothing"
                            " was written. A handler runs inside the batch's transaction and must never commit or"
                            " roll back (docs/handlers.md, The contract)")


def _rehearse(conn: Connection, payload: dict[str, Any], sample: int, watch: Deadline) -> dict[str, Any]:
    plan = BackfillRange().plan(conn, payload)
    p = plan.params
    target = resolve_target(conn, p["source"], p["key"])
    idents = {"source": target.source, "key": target.key.ident}
    where = filters.compile_filters(conn, target.source, p.get("where") or [])
    lo, hi, total = plan.from_key, plan.to_key, plan.total_estimate
    fractions = [(2 * i + 1) / (2 * sample) for i in range(sample)]  # the middles of `sample` equal shares
    bound = {"lo": lo, "hi": hi, "fractions": fractions, **where.params}
    if total <= EXACT_SAMPLE_BELOW:
        method = "exact quantiles of the matching rows' keys"
        picked = conn.execute(where.into(SQL["sample_keys_exact"], **idents), bound).scalars().all()
    else:
        percent = max(0.01, min(100.0, 100.0 * EXACT_SAMPLE_BELOW / total))
        method = f"quantiles of the matching rows' keys in a {percent:.3g}% block sample (TABLESAMPLE SYSTEM)"
        picked = conn.execute(where.into(SQL["sample_keys_blocks"], **idents), {**bound, "percent": percent}
                              ).scalars().all()
        if not picked:  # the block sample held no matching row: the range's first keys, at least
            method = "the range's first keys (the block sample held no matching row)"
            picked = [r.k for r in conn.execute(where.into(SQL["first_keys"], **idents),
                                                {"lo": lo, "hi": hi, "n": sample, **where.params})]
    sample_keys = [keys.from_db(k) for k in picked]
    own_sql = "sql" in p or "sql_sha256" in p
    before = _written(conn)
    started = time.monotonic()
    rows = conn.execute(where.into(SQL["sample_rows"], **idents), {"keys": sample_keys, **where.params}
                        ).mappings().all() if sample_keys else []
    if own_sql:  # the statement reads its rows itself: only its own time counts
        started = time.monotonic()
    failures: list[dict[str, Any]] = []
    if own_sql:
        statement = _own_statement(conn, p)
        for k in sample_keys:  # one statement per sampled key: (k - 1 unit, k] holds exactly its rows
            try:
                with conn.begin_nested():
                    trust.run_own_sql(conn, statement, {"lo": keys.before(k), "hi": k})
            except DBAPIError as err:
                if watch.stopped(err) is not None or is_outage(err):
                    raise
                failures.append({"item_key": keys.encode(k), "error_type": "batch",
                                 "message": error_text(err, with_class=True)})
    else:
        resolved = handlers.resolve(p["handler"])
        try:
            with conn.begin_nested():
                errors = handlers.run(conn, resolved, rows, p["item_key"])
            failures += [{"item_key": e.item_key, "error_type": e.error_type, "message": e.message} for e in errors]
        except Exception as err:
            if watch.stopped(err) is not None or is_outage(err) or isinstance(err, MemoryError):
                raise
            failures.append({"item_key": None, "error_type": "batch", "message": error_text(err)})
    seconds = time.monotonic() - started
    written = _written(conn, before)
    per_row = seconds / len(rows) if rows else None
    eta = None
    if per_row is not None:
        eta = total * per_row / max(1, plan.concurrency)
        if p.get("sleep_between_batches"):
            eta += math.ceil(total / plan.batch_size / max(1, plan.concurrency)) * p["sleep_between_batches"]
        if p.get("max_rows_per_second"):
            eta = max(eta, total / p["max_rows_per_second"])
    first = [keys.encode(r.k) for r in conn.execute(where.into(SQL["first_keys"], **idents),
                                                    {"lo": lo, "hi": hi, "n": 5, **where.params})]
    return {**_plan_report(plan, first),
            "sample": {"asked": sample, "method": method, "keys": len(sample_keys),
                       "picked": [keys.encode(k) for k in sample_keys[:SHOWN_KEYS]], "rows_read": len(rows),
                       "rows_written": sum(t["inserted"] + t["updated"] + t["deleted"] for t in written.values()),
                       "written": written, "would_fail": len(failures), "failures": failures[:MAX_FAILURES_SHOWN],
                       "seconds": round(seconds, 4), "as_role": store.session_user(conn)},
            "seconds_per_row": round(per_row, 6) if per_row is not None else None,
            "estimated_seconds": round(eta, 1) if eta is not None else None,
            "note": "ETA = rows x seconds per row / concurrency (and the pace knobs), from the handler run on the"
                    " sample in one rolled-back transaction: batch bookkeeping and commits are not in it"
                    + ("; a SQL handler ran once per sampled key, so its per-statement cost is counted per row"
                       if own_sql else "")}


def _own_statement(conn: Connection, p: dict[str, Any]) -> str:
    """The job's own statement, under the checks of a real run as far as a CLI can make them: an approved
    one must still be approved; an ad-hoc one needs the sql-author role of this login (the enqueuer), and it
    runs with this login's privileges, never the worker's."""
    if "sql_sha256" in p:
        statement = approved_sql.text_of(conn, p["sql_sha256"])
        if statement is None:
            raise InvalidInput(f"approved statement {p.get('sql_approved')!r} is no longer approved")
        return sql_check.check_text(statement)
    trust.check_author(conn)
    return sql_check.check_text(p["sql"])


def _written(conn: Connection, before: dict[str, dict[str, int]] | None = None) -> dict[str, dict[str, int]]:
    """Rows written per table in this transaction (minus ``before``): what the handler wrote."""
    now = {r.tbl: {"inserted": r.inserted, "updated": r.updated, "deleted": r.deleted}
           for r in conn.execute(text(SQL["written"]))}
    if before is None:
        return now
    out = {}
    for tbl, counts in now.items():
        was = before.get(tbl, {})
        diff = {k: v - was.get(k, 0) for k, v in counts.items()}
        if any(diff.values()):
            out[tbl] = diff
    return out


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
    detail = f"{source_rows} source rows in the processed ranges, processed_count {job.processed_count}"
    sampled = where
    ok = source_rows == job.processed_count
    if not ok and where.params and source_rows < job.processed_count:
        # a filter on what the handler itself writes (seed 001's `rawLinkset is null`): the rows it processed
        # match no more. The count lies between the rows that match now and all the rows of the ranges.
        every_row = sum(int(conn.execute(filters.NONE.into(SQL["count_done"], **idents), {"lo": a, "hi": b}
                                         ).scalar_one()) for a, b in spans)
        ok = job.processed_count <= every_row
        detail = (f"processed_count {job.processed_count}: {source_rows} rows of the processed ranges match the"
                  f" job's where now, {every_row} rows in all (rows its handler changed match no more)")
        sampled = filters.NONE  # and the recomputed sample is drawn from all the rows of the ranges
    report.add("source rows vs processed_count", ok, detail)

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
        for row in conn.execute(sampled.into(SQL["sample"], **idents), {"percent": percent, "seed": 7, "lo": a,
                                                                 "hi": b, "n": sample, **sampled.params}).mappings():
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
