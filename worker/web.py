"""`tidegate web`: a small read-only status page, its JSON API, and token-guarded admin actions.

Routes (all JSON unless noted):

    GET  /                                  the status page (HTML, refreshes itself)
    GET  /api/v1/jobs                       every job, as `tidegate status --json`
    GET  /api/v1/jobs/<id>                  one job
    GET  /api/v1/jobs/<id>/errors           its failed items
    POST /api/v1/admin/<kind>               enqueue (the runbook's POST /api/v1/admin/backfill)
    POST /api/v1/admin/jobs/<id>/<action>   pause, resume, cancel, retry

Admin routes need ``Authorization: Bearer $TIDEGATE_ADMIN_TOKEN``: 401 without it or with a
wrong one, 403 when the server has no token configured (admin disabled). The standard
library's threading HTTP server is enough for a page an SRE opens now and then.
"""

from __future__ import annotations

import hmac
import html
import json
import logging
import os
import re
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from sqlalchemy import Engine

from tidegate.worker import control, kinds, knobs, status, store
from tidegate.worker.enqueue import enqueue
from tidegate.worker.errors import IllegalTransition, InvalidInput, NotFound, TidegateError, quote
from tidegate.worker.redact import register_secret

log = logging.getLogger(__name__)
TEMPLATE = resources.files("worker").joinpath("web.html").read_text()
JOB = r"([0-9a-fA-F-]{1,36})"
MAX_BODY = 64 * 1024


class Api:
    def __init__(self, engine: Engine, token: str | None) -> None:
        self.engine = engine
        self.token = token

    def jobs(self, job: str | None = None) -> Any:
        with self.engine.connect() as conn:
            job_id = control.find_job(conn, job) if job else None
            rows = status.job_rows(conn, job_id, 100)
        return rows[0] if job else rows

    def errors(self, job: str, limit: int = 50) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            job_id = control.find_job(conn, job)
            found = store.job_errors(conn, job_id, limit)
        return [{**r, "sample_hidden": found.sample_hidden} if found.sample_hidden else r for r in found.rows]

    def authorized(self, header: str | None) -> HTTPStatus | None:
        if not self.token:
            return HTTPStatus.FORBIDDEN
        given = (header or "").removeprefix("Bearer ").strip()
        if not header or not header.startswith("Bearer ") or not hmac.compare_digest(given, self.token):
            return HTTPStatus.UNAUTHORIZED
        return None

    def admin(self, path: str, body: dict[str, Any], actor: str) -> tuple[HTTPStatus, Any]:
        if m := re.fullmatch(rf"/api/v1/admin/jobs/{JOB}/(pause|resume|cancel|retry)", path):
            with self.engine.begin() as conn:
                job_id = control.transition(conn, m[1], m[2], actor, body.get("reason"))
            return HTTPStatus.OK, {"job_id": job_id, "action": m[2]}
        if m := re.fullmatch(r"/api/v1/admin/([a-z][a-z0-9_-]*)", path):
            kind = kinds.by_alias(m[1])
            if kind is None:
                raise NotFound(f"no job kind {quote(m[1])}")
            # the queue options beside the payload: checked by enqueue against worker/knobs.py, as the
            # payload's own knobs are by the kind's validation
            options = {k: body.pop(k) for k in ["queue", *(k.name for k in knobs.QUEUE_KNOBS)] if k in body}
            job_id, plan = enqueue(self.engine, kind.name, body, actor=actor, **options)
            return HTTPStatus.CREATED, {"job_id": job_id, "type": kind.name, "slices": len(plan.slices)}
        raise NotFound("no such admin route")


def page(rows: list[dict[str, Any]], errors: dict[str, list[dict[str, Any]]], refresh: float) -> str:
    body = []
    for r in rows:
        total = r["total_estimate"] or 0
        value = r["processed_count"] if r["status"] != "done" else max(total, r["processed_count"], 1)
        pct = "100%" if r["status"] == "done" else (f"{100.0 * r['processed_count'] / total:.1f}%" if total else "-")
        note = r["last_error"] if r["status"] == "failed" else (r["reason"] or "")
        if r["by"] and r["status"] == "paused":
            note = f"{note} (by {r['by']})"
        body.append(
            f'<tr class="job" data-job="{html.escape(r["job_id"])}" data-processed="{r["processed_count"]}">'
            f'<td><code>{html.escape(r["job_id"][:8])}</code></td><td>{html.escape(r["type"])}</td>'
            f'<td class="status {html.escape(r["status"])}">{html.escape(r["status"])}</td>'
            f'<td><progress max="{max(total, value, 1)}" value="{value}"></progress> {pct}</td>'
            f'<td class="processed">{r["processed_count"]:,}</td><td>{r["error_count"]:,}</td>'
            f'<td>{r["rows_per_second"] or "-"}</td><td>{status.human_seconds(r["eta_seconds"])}</td>'
            f"<td>{html.escape(note or '')}</td></tr>"
        )
    recent = []
    for job_id, items in errors.items():
        for e in items:
            recent.append(f"<li><code>{html.escape(job_id[:8])}</code> item {html.escape(str(e['item_key']))}: "
                          f"<b>{html.escape(e['error_type'])}</b> {html.escape(e['message'])}</li>")
    return (TEMPLATE.replace("{{refresh}}", str(refresh))
            .replace("{{rows}}", "\n".join(body) or '<tr><td colspan="9">no jobs</td></tr>')
            .replace("{{errors}}", "\n".join(recent) or "<li>none</li>"))


def serve(engine: Engine, host: str, port: int, refresh: float = 2.0) -> ThreadingHTTPServer:
    api = Api(engine, os.environ.get("TIDEGATE_ADMIN_TOKEN") or None)
    register_secret(api.token)

    class Handler(BaseHTTPRequestHandler):
        server_version = "tidegate"

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("web: " + fmt, *args)

        def _send(self, code: int, body: Any, content_type: str = "application/json") -> None:
            data = (body if isinstance(body, str) else json.dumps(body, default=str)).encode()
            self.send_response(code)
            self.send_header("Content-Type", f"{content_type}; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def _guard(self, call) -> None:  # type: ignore[no-untyped-def]
            try:
                call()
            except NotFound as err:
                self._send(404, {"error": str(err)})
            except IllegalTransition as err:
                self._send(409, {"error": str(err)})
            except (InvalidInput, ValueError) as err:
                self._send(400, {"error": str(err)})
            except TidegateError as err:
                self._send(503, {"error": str(err)})

        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0]
            if path == "/":
                def show() -> None:
                    rows = api.jobs()
                    errs = {r["job_id"]: api.errors(r["job_id"], 5) for r in rows[:10] if r["error_count"]}
                    self._send(200, page(rows, errs, refresh), "text/html")
                self._guard(show)
            elif path == "/api/v1/jobs":
                self._guard(lambda: self._send(200, api.jobs()))
            elif m := re.fullmatch(rf"/api/v1/jobs/{JOB}", path):
                self._guard(lambda: self._send(200, api.jobs(m[1])))
            elif m := re.fullmatch(rf"/api/v1/jobs/{JOB}/errors", path):
                self._guard(lambda: self._send(200, api.errors(m[1])))
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0]
            if not path.startswith("/api/v1/admin/"):
                self._send(404, {"error": "not found"})
                return
            refused = api.authorized(self.headers.get("Authorization"))
            if refused is not None:
                reason = "admin API disabled: set TIDEGATE_ADMIN_TOKEN" if refused == HTTPStatus.FORBIDDEN \
                    else "a valid bearer token is required"
                self._send(refused, {"error": reason})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._send(413, {"error": "body too large"})
                return
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
                if not isinstance(body, dict):
                    raise ValueError("the body must be a JSON object")
            except ValueError as err:
                self._send(400, {"error": f"invalid JSON body: {err}"})
                return
            actor = str(body.pop("by", None) or self.headers.get("X-Tidegate-Actor") or "web-admin")[:100]
            self._guard(lambda: self._send(*api.admin(path, body, actor)))

    server = ThreadingHTTPServer((host, port), Handler)
    log.info("status page on http://%s:%d/", host, server.server_address[1])
    return server
