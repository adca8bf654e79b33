"""`tidegate web`: the operator console (HTML), its JSON API, and token-guarded admin actions.

Routes (JSON unless noted):

    GET  /                                  the jobs, with their buttons once signed in (HTML)
    GET  /jobs/<id>                         one job: knobs, slices, failed items, audit trail, rate chart (HTML)
    POST /login, /logout                    sign in with the admin token (a form), sign out
    POST /jobs/<id>/<action>                pause, resume, cancel, retry, set (forms: session cookie + CSRF token)
    GET  /api/v1/jobs                       every job, as `tidegate status --json`
    GET  /api/v1/jobs/<id>                  one job
    GET  /api/v1/jobs/<id>/errors           its failed items
    GET  /api/v1/jobs/<id>/slices|audit|rates   its slices, audit rows, per-minute rate history
    POST /api/v1/admin/<kind>               enqueue (the runbook's POST /api/v1/admin/backfill)
    POST /api/v1/admin/jobs/<id>/<action>   pause, resume, cancel, retry; set (body: {knob: value})

With ``--targets`` (fan-out runs over several databases, issue 15.3; worker/runview.py):

    GET  /runs, /runs/<run_id>              the runs, one line each with their targets below; one run (HTML)
    POST /runs/<run_id>/<action>            pause, resume, cancel every job of the run (forms, as above)
    GET  /api/v1/runs, /api/v1/runs/<run_id>
    POST /api/v1/admin/runs/<run_id>/<action>   pause, resume, cancel (bearer)

A target that cannot be read shows as unreadable on these pages (never a 500); a run action moves the
jobs it applies to and skips the others (a done job is not paused), target by target. Started with
``--targets`` alone (no --database-url, --target or DATABASE_URL) the console has no jobs pages: ``/``
is the runs page and the job routes answer 404.

Admin routes need ``Authorization: Bearer $TIDEGATE_ADMIN_TOKEN`` (scripts) or, for the console's
forms, the session cookie that signing in with that token sets plus the form's CSRF token: 401
without them or with wrong ones, 403 when the server has no token (admin disabled: the pages say
so and stay read-only). Failures answer as the CLI's exit codes do: 400 invalid input, 404 no such
job, 409 wrong state; a page shows them, never a dropped connection. Every route takes a job as the
CLI does (control.find_job): a full id or an unambiguous prefix; a malformed id is a 400, an unknown
one a 404 and an ambiguous prefix a 400 naming two matches, on every route alike. Samples (copies of source
rows) are shown only to a signed-in viewer or a bearer, and only where the server's login may read
them (store.job_errors). The standard library's threading HTTP server is enough for a console.
"""

from __future__ import annotations

import json
import logging
import os
import re
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sqlalchemy import Engine

from tidegate.worker import control, kinds, knobs, runs, runview, status, store, webpages
from tidegate.worker.enqueue import enqueue
from tidegate.worker.errors import InvalidInput, NotFound, TidegateError, quote
from tidegate.worker.redact import error_text, register_secret
from tidegate.worker.webauth import COOKIE, Session, Sessions, cookie_flags
from tidegate.worker.webpages import Viewer

log = logging.getLogger(__name__)
# a job id in a route: any one path segment, checked by control.find_job as the CLI's are (malformed: 400,
# no such job: 404, an ambiguous prefix: 400), the same on every route
JOB = r"([^/]+)"
JOB_PAGE = r"/jobs/[0-9a-fA-F-]{1,36}|/runs|/runs/[0-9a-fA-F-]{36}"  # a page signing in may return to
RUN = r"([^/]+)"  # a run id in a route: checked by runs.check_run_id (malformed: 400)
ACTIONS = ("pause", "resume", "cancel", "retry")
MAX_BODY = 64 * 1024
STATIC = {"console.js": "text/javascript", "console.css": "text/css"}
# what the console's pages may load and where their forms may post: only this server
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
# an error's HTTP status, from its CLI exit code (worker/errors.py): invalid input, no such job, wrong state,
# database unavailable or schema not ready, permission denied
STATUS_OF_EXIT = {2: 400, 3: 404, 4: 409, 5: 503, 6: 403}
ERRORS_SHOWN, SLICES_SHOWN, AUDIT_SHOWN = 50, 200, 100
Rows = list[dict[str, Any]]


class Refused(TidegateError):
    """A request the server answers with ``status`` (401, 403, 413) without touching the database."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def http_status(err: TidegateError) -> int:
    return err.status if isinstance(err, Refused) else STATUS_OF_EXIT.get(err.exit_code, 500)


def text_field(value: Any, field: str, limit: int = 500) -> str | None:
    """An optional free-text field (reason, name) as posted: a string without NUL, at most ``limit`` chars."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or "\x00" in value or len(value) > limit:
        raise InvalidInput(f"{field} must be text of at most {limit} characters, got {quote(value, 60)}")
    return value.strip() or None


class Api:
    """What the pages and the JSON API read and do: control.py's actions, status.py's rows, store's reads."""

    def __init__(self, engine: Engine | None, token: str | None, targets: list | None = None) -> None:  # type: ignore[type-arg]
        self._engine = engine
        self.token = token
        self.targets = targets  # worker/targets.py Targets whose runs are shown (`tidegate web --targets`)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise NotFound("this console serves runs over targets only (started with --targets and no database):"
                           " see /runs")
        return self._engine

    def _targets(self) -> list:  # type: ignore[type-arg]
        if not self.targets:
            raise NotFound("no runs here: start `tidegate web --targets SPEC` to see fan-out runs over targets")
        return self.targets

    def runs(self, limit: int = 20) -> tuple[list[tuple[str, dict[str, Any], list[Any]]], list[Any]]:
        """The newest runs over the targets: (run_id, summary, parts) each, and the unreadable targets."""
        found, down = runview.read_runs(self._targets(), limit)
        return [(run_id, runs.summarize(parts), parts) for run_id, parts in found], down

    def run(self, run_id: str) -> tuple[str, dict[str, Any], list[Any]]:
        run_id = runs.check_run_id(run_id)
        parts = runs.read_run(self._targets(), run_id)
        if not parts:
            raise NotFound(f"no job of run {run_id} in any target")
        return run_id, runs.summarize(parts), parts

    def act_run(self, run_id: str, action: str, body: dict[str, Any], actor: str) -> dict[str, Any]:
        reason = text_field(body.pop("reason", None), "reason")
        if body:
            raise InvalidInput(f"unknown field(s) for {action}: {', '.join(map(quote, sorted(body)))}")
        run_id = runs.check_run_id(run_id)
        return {"run_id": run_id, "action": action,
                "jobs": runview.act_run(self._targets(), run_id, action, actor, reason)}

    def jobs(self, job: str | None = None) -> Any:
        with self.engine.connect() as conn:
            job_id = control.find_job(conn, job) if job else None
            rows = status.job_rows(conn, job_id, 100)
        return rows[0] if job else rows

    def errors(self, job: str, limit: int = ERRORS_SHOWN, *, samples: bool = True) -> tuple[Rows, str | None]:
        """Failed items, and why their samples are hidden (None: shown). ``samples``: the viewer may see them
        (then the server's login decides, store.job_errors)."""
        with self.engine.connect() as conn:
            found = store.job_errors(conn, control.find_job(conn, job), limit)
        hidden = found.sample_hidden if samples else "sign in (or send the bearer token) to see samples"
        rows = found.rows if not hidden else [{**r, "sample": None} for r in found.rows]
        return rows, hidden

    def job_view(self, job: str, minutes: int | None) -> dict[str, Any]:
        """Everything a job's page shows but its failed items; the rate history of the last ``minutes``
        (None: since the job started, 10 minutes to 2 hours)."""
        with self.engine.connect() as conn:
            job_id = control.find_job(conn, job)
            (row,) = status.job_rows(conn, job_id, 1)
            if minutes is None:
                started = datetime.fromisoformat(row["started_at"]) if row["started_at"] else datetime.now(UTC)
                minutes = min(max(int((datetime.now(UTC) - started).total_seconds() // 60) + 2, 10), 120)
            return {"job": row, "knobs": store.console_knobs(conn, job_id),
                    "slices": store.console_slices(conn, job_id, SLICES_SHOWN),
                    "audit": store.console_audit(conn, job_id, AUDIT_SHOWN),
                    "rates": store.console_rates(conn, job_id, minutes), "minutes": minutes}

    def act(self, job: str, action: str, body: dict[str, Any], actor: str) -> dict[str, Any]:
        """``action`` on a job: a move (control.transition) or, for ``set``, knob changes (control.set_knobs)."""
        with self.engine.begin() as conn:
            job_id = control.find_job(conn, job)  # first: an unknown job is a 404 whatever the body
            if action == "set":
                if not body:
                    raise InvalidInput("no knob given: name at least one of "
                                       + ", ".join(k.name for k in knobs.LIVE_KNOBS))
                control.set_knobs(conn, job_id, body, actor)
                return {"job_id": job_id, "action": "set", "changes": body}
            reason = text_field(body.pop("reason", None), "reason")
            if body:
                raise InvalidInput(f"unknown field(s) for {action}: {', '.join(map(quote, sorted(body)))}")
            control.transition(conn, job_id, action, actor, reason)
        return {"job_id": job_id, "action": action}

    def admin(self, path: str, body: dict[str, Any], actor: str) -> tuple[int, Any]:
        if m := re.fullmatch(rf"/api/v1/admin/runs/{RUN}/({'|'.join(runview.RUN_ACTIONS)})", path):
            return 200, self.act_run(m[1], m[2], body, actor)
        if m := re.fullmatch(rf"/api/v1/admin/jobs/{JOB}/({'|'.join(ACTIONS)}|set)", path):
            return 200, self.act(m[1], m[2], body, actor)
        if m := re.fullmatch(r"/api/v1/admin/([a-z][a-z0-9_-]*)", path):
            kind = kinds.by_alias(m[1])
            if kind is None:
                raise NotFound(f"no job kind {quote(m[1])}")
            # the queue options beside the payload: checked by enqueue against worker/knobs.py, as the
            # payload's own knobs are by the kind's validation
            options = {k: body.pop(k) for k in ["queue", *(k.name for k in knobs.QUEUE_KNOBS)] if k in body}
            job_id, plan = enqueue(self.engine, kind.name, body, actor=actor, **options)
            return 201, {"job_id": job_id, "type": kind.name, "slices": len(plan.slices)}
        raise NotFound("no such admin route")


def run_json(run_id: str, summary: dict[str, Any], parts: list[Any]) -> dict[str, Any]:
    return {"run_id": run_id, **summary,
            "targets": [{"target": p.target, "jobs": p.jobs, "error": p.error} for p in parts]}


def serve(engine: Engine | None, host: str, port: int, refresh: float = 2.0,
          targets: list | None = None) -> ThreadingHTTPServer:  # type: ignore[type-arg]
    """``targets``: show the fan-out runs over them too; ``engine`` None: runs only."""
    api = Api(engine, os.environ.get("TIDEGATE_ADMIN_TOKEN") or None, targets)
    register_secret(api.token)
    sessions = Sessions(api.token)

    class Handler(BaseHTTPRequestHandler):
        server_version = "tidegate"
        timeout = 30  # a client that announces a body and sends less is dropped after this, not waited for

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("web: " + fmt, *args)

        # -- answers ---------------------------------------------------------------------------------

        def _send(self, code: int, body: Any, content_type: str = "application/json",
                  headers: dict[str, str] | None = None) -> None:
            data = (body if isinstance(body, str) else json.dumps(body, default=str)).encode()
            self.send_response(code)
            self.send_header("Content-Type", f"{content_type}; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for name, value in {**SECURITY_HEADERS, **(headers or {})}.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _redirect(self, location: str, cookie: str | None = None) -> None:
            self.send_response(303)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            if cookie is not None:
                self.send_header("Set-Cookie", cookie)
            for name, value in SECURITY_HEADERS.items():
                self.send_header(name, value)
            self.end_headers()

        def _guard(self, call, page: str | None = None) -> None:  # type: ignore[no-untyped-def]
            """Run ``call``; a failure answers with its status, as JSON or (``page``: the page's title) HTML."""
            try:
                call()
                return
            except TidegateError as err:
                code, message = http_status(err), str(err)
            except Exception as err:  # a bug or a database fault: an answer, never a dropped connection
                log.exception("web: %s %s failed", self.command, self.path[:200])
                code, message = 500, f"internal error: {error_text(err, 300)}"
            if page is None:
                self._send(code, {"error": message})
            else:
                self._send(code, webpages.layout(page, "", self._viewer(), refresh, webpages.banner("error", message)),
                           "text/html")

        # -- requests --------------------------------------------------------------------------------

        def _path(self) -> tuple[str, dict[str, list[str]]]:
            url = urlsplit(self.path)
            return url.path, parse_qs(url.query)

        def _session(self) -> Session | None:
            return sessions.read(self.headers.get_all("Cookie") or [])

        def _viewer(self) -> Viewer:
            session = self._session()
            path = self._path()[0]
            return Viewer(admin=api.token is not None, name=session.name if session else None,
                          csrf=session.csrf if session else None,
                          path=path if path.startswith(("/jobs/", "/runs")) else "/",
                          runs=bool(api.targets), jobs=api._engine is not None)

        def _body(self) -> bytes:
            given = self.headers.get("Content-Length")
            raw = "0" if given is None else given.strip()  # absent: no body; present, it must be a number
            if not raw.isascii() or not raw.isdigit():
                raise InvalidInput(f"Content-Length must be a non-negative integer, got {quote(raw, 40)}")
            if int(raw) > MAX_BODY:
                raise Refused(413, f"body too large: at most {MAX_BODY:,} bytes")
            return self.rfile.read(int(raw))

        def _form(self) -> dict[str, str]:
            try:
                fields = parse_qs(self._body().decode("utf-8"), keep_blank_values=True, max_num_fields=100)
            except (UnicodeDecodeError, ValueError) as err:
                raise InvalidInput(f"invalid form: {err}") from None
            return {k: v[0] for k, v in fields.items()}

        def _json(self) -> dict[str, Any]:
            try:
                body = json.loads(self._body() or b"{}")
            except (ValueError, RecursionError) as err:
                raise InvalidInput(f"invalid JSON body: {str(err)[:200]}") from None
            if not isinstance(body, dict):
                raise InvalidInput("invalid JSON body: the body must be a JSON object")
            return body

        def do_HEAD(self) -> None:  # noqa: N802
            self.do_GET()

        def do_GET(self) -> None:  # noqa: N802
            path, query = self._path()
            if path == "/" and api._engine is None:
                self._redirect("/runs")
            elif path == "/":
                self._guard(lambda: self._jobs_page(query), "jobs")
            elif path == "/runs":
                self._guard(lambda: self._runs_page(query), "runs")
            elif m := re.fullmatch(rf"/runs/{RUN}", path):
                self._guard(lambda: self._run_page(m[1], query), "run")
            elif path == "/api/v1/runs":
                self._guard(lambda: self._send(200, [run_json(*r) for r in api.runs()[0]]))
            elif m := re.fullmatch(rf"/api/v1/runs/{RUN}", path):
                self._guard(lambda: self._send(200, run_json(*api.run(m[1]))))
            elif m := re.fullmatch(rf"/jobs/{JOB}", path):
                self._guard(lambda: self._job_page(m[1], query), "job")
            elif m := re.fullmatch(r"/static/([a-z]+\.[a-z]+)", path):
                if m[1] not in STATIC:
                    self._send(404, {"error": "not found"})
                    return
                source = resources.files(__package__).joinpath("static", m[1]).read_text()
                self._send(200, source, STATIC[m[1]], {"Cache-Control": "max-age=300"})
            elif path == "/api/v1/jobs":
                self._guard(lambda: self._send(200, api.jobs()))
            elif m := re.fullmatch(rf"/api/v1/jobs/{JOB}", path):
                self._guard(lambda: self._send(200, api.jobs(m[1])))
            elif m := re.fullmatch(rf"/api/v1/jobs/{JOB}/(errors|slices|audit|rates)", path):
                self._guard(lambda: self._send(200, self._job_part(m[1], m[2], query)))
            else:
                self._send(404, {"error": "not found"})

        def _job_part(self, job: str, part: str, query: dict[str, list[str]]) -> Any:
            if part == "errors":
                rows, hidden = api.errors(job, samples=self._may_see_samples())
                return [{**r, "sample_hidden": hidden} if hidden else r for r in rows]
            view = api.job_view(job, _minutes(query))
            if part == "rates":
                return webpages.rate_series(view["rates"], view["minutes"])
            return view[part]

        def _may_see_samples(self) -> bool:
            return self._session() is not None or api.token is not None and sessions.bearer_ok(
                self.headers.get("Authorization"))

        def _jobs_page(self, query: dict[str, list[str]]) -> None:
            rows = api.jobs()
            errs = {r["job_id"]: api.errors(r["job_id"], 5, samples=False)[0] for r in rows[:10] if r["error_count"]}
            viewer = self._viewer()
            self._send(200, webpages.layout("jobs", webpages.jobs_page(rows, errs, viewer), viewer, refresh,
                                            _flash(query)), "text/html")

        def _runs_page(self, query: dict[str, list[str]]) -> None:
            found, down = api.runs()
            viewer = self._viewer()
            body = webpages.runs_page(found, down, [t.name for t in api._targets()])
            self._send(200, webpages.layout("runs", body, viewer, refresh, _flash(query)), "text/html")

        def _run_page(self, run_id: str, query: dict[str, list[str]]) -> None:
            run_id, summary, parts = api.run(run_id)
            viewer = self._viewer()
            self._send(200, webpages.layout(f"run {run_id[:8]}", webpages.run_page(run_id, summary, parts, viewer),
                                            viewer, refresh, _flash(query)), "text/html")

        def _job_page(self, job: str, query: dict[str, list[str]]) -> None:
            view = api.job_view(job, _minutes(query))
            viewer = self._viewer()
            errors, hidden = api.errors(job, samples=viewer.signed_in)
            body = webpages.job_page(view["job"], view["knobs"], view["slices"], errors, hidden, view["audit"],
                                     view["rates"], viewer, view["minutes"])
            self._send(200, webpages.layout(f"job {view['job']['job_id'][:8]}", body, viewer, refresh,
                                            _flash(query)), "text/html")

        def do_POST(self) -> None:  # noqa: N802
            path = self._path()[0]
            if path.startswith("/api/v1/admin/"):
                self._guard(lambda: self._api_post(path))
            elif path == "/login":
                self._guard(self._login, "sign in")
            elif path == "/logout":
                self._guard(self._logout, "sign out")
            elif m := re.fullmatch(rf"/jobs/{JOB}/({'|'.join(ACTIONS)}|set)", path):
                self._guard(lambda: self._form_action(m[1], m[2]), "job")
            elif m := re.fullmatch(rf"/runs/{RUN}/({'|'.join(runview.RUN_ACTIONS)})", path):
                self._guard(lambda: self._run_action(m[1], m[2]), "run")
            else:
                self._send(404, {"error": "not found"})

        def _api_post(self, path: str) -> None:
            if api.token is None:
                raise Refused(403, "admin API disabled: set TIDEGATE_ADMIN_TOKEN")
            if not sessions.bearer_ok(self.headers.get("Authorization")):
                raise Refused(401, "a valid bearer token is required")
            body = self._json()
            actor = text_field(body.pop("by", None), "by", 100) or text_field(
                self.headers.get("X-Tidegate-Actor"), "X-Tidegate-Actor", 100) or "web-admin"
            self._send(*api.admin(path, body, actor))

        def _login(self) -> None:
            form = self._form()
            if api.token is None:
                raise Refused(403, "read-only: no admin token is configured (set TIDEGATE_ADMIN_TOKEN)")
            if not sessions.token_ok(form.get("token", "")):
                raise Refused(401, "wrong admin token")
            name = text_field(form.get("name"), "name", 64) or "web-admin"
            target = form.get("next", "/")
            if not re.fullmatch(rf"/|{JOB_PAGE}", target):
                target = "/"
            self._redirect(target, sessions.cookie(name, self._over_https()))

        def _over_https(self) -> bool:
            """The console speaks plain HTTP; behind a TLS-terminating proxy that says so (the usual
            X-Forwarded-Proto), its cookie is marked Secure. A client claiming HTTPS over plain HTTP only
            makes its own browser keep the cookie back."""
            return (self.headers.get("X-Forwarded-Proto") or "").split(",")[0].strip().lower() == "https"

        def _logout(self) -> None:
            self._checked_session(self._form())
            self._redirect("/", f"{COOKIE}={cookie_flags(self._over_https())}; Max-Age=0")

        def _checked_session(self, form: dict[str, str]) -> Session:
            if api.token is None:
                raise Refused(403, "read-only: no admin token is configured (set TIDEGATE_ADMIN_TOKEN)")
            session = self._session()
            if session is None:
                raise Refused(401, "sign in with the admin token first")
            if not sessions.csrf_ok(session, form.get("csrf", "")):
                raise Refused(403, "the form's CSRF token is missing or wrong: reload the page and try again")
            return session

        def _form_action(self, job: str, action: str) -> None:
            form = self._form()
            session = self._checked_session(form)
            form.pop("csrf", None)
            if action == "set":  # empty fields: unchanged
                body: dict[str, Any] = {k: v for k, v in form.items() if v.strip()}
            else:
                body = {"reason": form.get("reason")}
            done = api.act(job, action, body, session.name)
            self._redirect(f"/jobs/{done['job_id']}?did={action}")

        def _run_action(self, run_id: str, action: str) -> None:
            form = self._form()
            session = self._checked_session(form)
            done = api.act_run(run_id, action, {"reason": form.get("reason")}, session.name)
            unreached = sum(1 for j in done["jobs"] if "error" in j)
            self._redirect(f"/runs/{done['run_id']}?did={action}" + (f"&unreached={unreached}" if unreached else ""))

    server = ThreadingHTTPServer((host, port), Handler)
    log.info("console on http://%s:%d/", host, server.server_address[1])
    return server


def _minutes(query: dict[str, list[str]]) -> int | None:
    """The rate chart's window (?minutes=, 10 to a week; None: the job's own, see Api.job_view)."""
    if "minutes" not in query:
        return None
    raw = query["minutes"][0]
    if not raw.isdigit() or not 10 <= int(raw) <= 7 * 24 * 60:
        raise InvalidInput(f"minutes must be an integer between 10 and 10080, got {quote(raw, 40)}")
    return int(raw)


def _flash(query: dict[str, list[str]]) -> str:
    """The banner after an action (?did=ACTION, set by the redirect; only known actions are shown)."""
    did = (query.get("did") or [""])[0]
    unreached = (query.get("unreached") or [""])[0]
    if did in runview.RUN_ACTIONS and unreached.isdigit():
        return webpages.banner("error", f"{did}: done in the targets reached; {int(unreached)} target(s) could not"
                                        " be reached (below): act again once they answer")
    return webpages.banner("ok", f"{did}: done" if did != "set" else "knobs set: they apply at the next batch") \
        if did in (*ACTIONS, "set") else ""
