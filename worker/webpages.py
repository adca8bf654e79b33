"""The console's HTML (worker/web.py serves it): the jobs page, a job's page, and what they share.

worker/web.html is the layout. Every value shown is escaped here. Which buttons a job gets comes from
the state machine (worker/states.py), its knob form from the knob table (worker/knobs.py); the server
checks both again on every post. Each form carries the session's CSRF token.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

from tidegate.worker import knobs, status
from tidegate.worker.errors import shorten
from tidegate.worker.states import TRANSITIONS

LAYOUT = resources.files(__package__).joinpath("web.html").read_text()
# the actions whose effect an operator may regret: the button asks first
CONFIRM = {"cancel": "Cancel job {job}? Its slices stop at their next batch (retry starts them again)."}
CHART_WIDTH, CHART_HEIGHT, CHART_PAD = 1000, 140, 34


@dataclass(frozen=True)
class Viewer:
    """Who is looking: ``admin`` is False when the server has no token (read-only); ``csrf`` is set once
    signed in; ``path`` is the page, where signing in returns to."""

    admin: bool
    name: str | None = None
    csrf: str | None = None
    path: str = "/"
    runs: bool = False  # the server reads fan-out runs over targets (`tidegate web --targets`)
    jobs: bool = True  # the server has one database whose jobs it shows

    @property
    def signed_in(self) -> bool:
        return self.csrf is not None


class Markup(str):
    """Text already escaped (HTML built here): :func:`_cells` puts it in as is."""


def e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def layout(title: str, body: str, viewer: Viewer, refresh: float, banner: str = "") -> str:
    nav = ('<nav id="nav">' + ('<a href="/">jobs</a> ' if viewer.jobs else "") + '<a href="/runs">runs</a></nav>'
           if viewer.runs else "")
    fills = {"title": e(title), "refresh": e(refresh), "session": nav + _session(viewer), "banner": banner,
             "body": body}
    out = LAYOUT
    for key, value in fills.items():
        out = out.replace("{{" + key + "}}", value)
    return out


def banner(kind: str, text: str) -> str:
    """A message at the top of the page: ``kind`` is ok, error or info."""
    return f'<p class="banner {kind}" role="{"alert" if kind == "error" else "status"}">{e(text)}</p>'


def _session(viewer: Viewer) -> str:
    if not viewer.admin:
        return ('<span class="session" id="read-only">read-only: no admin token is configured (start'
                " <code>tidegate web</code> with <code>TIDEGATE_ADMIN_TOKEN</code> set to enable actions)</span>")
    if viewer.signed_in:
        return (f'<form method="post" action="/logout" class="session">signed in as <b id="signed-in">{e(viewer.name)}'
                f"</b>{_csrf(viewer)}<button>sign out</button></form>")
    return ('<form method="post" action="/login" class="session" id="sign-in">'
            f'<input type="hidden" name="next" value="{e(viewer.path)}">'
            '<input type="text" name="name" placeholder="your name (audit)" maxlength="64" autocomplete="username">'
            '<input type="password" name="token" placeholder="admin token" required autocomplete="current-password">'
            "<button>sign in</button></form>")


def _csrf(viewer: Viewer) -> str:
    return f'<input type="hidden" name="csrf" value="{e(viewer.csrf)}">'


def allowed_actions(job_status: str) -> list[str]:
    return [action for action, (sources, _) in TRANSITIONS.items() if job_status in sources]


def actions_form(job: dict[str, Any], viewer: Viewer, *, reason: bool = True) -> str:
    """The job's buttons (the moves its state allows), or nothing for a viewer who may not act."""
    possible = allowed_actions(job["status"])
    if not viewer.signed_in or not possible:
        return ""
    job_id = e(job["job_id"])
    buttons = []
    for action in possible:
        ask = CONFIRM.get(action)
        extra = f' class="danger" data-confirm="{e(ask.format(job=job["job_id"][:8]))}"' if ask else ""
        buttons.append(f'<button formaction="/jobs/{job_id}/{action}" data-action="{action}"{extra}>{action}</button>')
    field = '<input type="text" name="reason" placeholder="reason (audit)" maxlength="500">' if reason else ""
    return f'<form method="post" class="actions" data-job="{job_id}">{_csrf(viewer)}{field}{"".join(buttons)}</form>'


def jobs_page(rows: list[dict[str, Any]], errors: dict[str, list[dict[str, Any]]], viewer: Viewer) -> str:
    body = []
    short = status.short_ids([r["job_id"] for r in rows])  # unique among those shown, as `tidegate status`'s
    for r in rows:
        total = r["total_estimate"] or 0
        value = r["processed_count"] if r["status"] != "done" else max(total, r["processed_count"], 1)
        pct = "100%" if r["status"] == "done" else (f"{100.0 * r['processed_count'] / total:.1f}%" if total else "-")
        note = r["last_error"] if r["status"] == "failed" else (r["reason"] or "")
        if r["by"] and r["status"] == "paused":
            note = f"{note} (by {r['by']})"
        job_id = e(r["job_id"])
        body.append(
            f'<tr class="job" data-job="{job_id}" data-processed="{r["processed_count"]}"'
            f' data-status="{e(r["status"])}">'
            f'<td><a href="/jobs/{job_id}"><code>{e(short[r["job_id"]])}</code></a></td><td>{e(r["type"])}</td>'
            f'<td class="status {e(r["status"])}">{e(r["status"])}</td>'
            f'<td><progress max="{max(total, value, 1)}" value="{value}"></progress> {pct}</td>'
            f'<td class="num processed">{r["processed_count"]:,}</td><td class="num">{r["error_count"]:,}</td>'
            f'<td class="num">{r["rows_per_second"] or "-"}</td><td>{status.human_seconds(r["eta_seconds"])}</td>'
            f"<td>{e(note)}</td><td>{actions_form(r, viewer, reason=False)}</td></tr>"
        )
    recent = [f'<li><a href="/jobs/{e(job_id)}"><code>{e(short[job_id])}</code></a> item {e(x["item_key"])}: '
              f'<b>{e(x["error_type"])}</b> {e(x["message"])}</li>' for job_id, items in errors.items() for x in items]
    return (
        '<table id="jobs"><thead><tr><th>job</th><th>type</th><th>status</th><th>progress</th>'
        '<th class="num">processed</th><th class="num">errors</th><th class="num">rows/s</th><th>ETA</th><th>note</th>'
        f'<th>actions</th></tr></thead><tbody>{"".join(body) or "<tr><td colspan=10>no jobs</td></tr>"}</tbody></table>'
        f'<h2>Recent errors</h2><ul>{"".join(recent) or "<li>none</li>"}</ul>'
    )


Rows = list[dict[str, Any]]


def job_page(job: dict[str, Any], knob_values: dict[str, Any], slices: Rows, errors: Rows, sample_hidden: str | None,
             audit: Rows, rates: Rows, viewer: Viewer, minutes: int) -> str:
    moved = (f" — {e(job['reason'])}" if job["reason"] else "") + (f" (by {e(job['by'])})" if job["by"] else "")
    facts = {
        "job": f"<code>{e(job['job_id'])}</code>", "type": e(job["type"]),
        "status": f'<span class="status {e(job["status"])}" id="job-status">{e(job["status"])}</span>'
                  + moved,
        "owner": e(job["owner"]), "enqueued by": e(job["enqueued_by"]), "queue": e(job["queue"]),
        "processed": f"{job['processed_count']:,} of ~{job['total_estimate'] or 0:,}",
        "errors": f"{job['error_count']:,}", "range": e(" … ".join(job["range"])) if job["range"] else "-",
        "checkpoint": f"<code>{e(job['last_checkpoint'])}</code>",
        "rows/s (average)": e(job["rows_per_second"] or "-"), "ETA": status.human_seconds(job["eta_seconds"]),
        "held by gate": e(job["held_by"] or "-"), "attempts": f"{job['attempts']} of {job['max_attempts']}",
        "started": e(job["started_at"] or "-"), "finished": e(job["finished_at"] or "-"),
    }
    if job.get("last_error"):
        facts["last error"] = e(job["last_error"])
    parts = [
        '<div class="grid"><section><h2>Job</h2><dl class="facts">'
        + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts.items()) + "</dl>"
        + actions_form(job, viewer) + "</section>",
        f"<section><h2>Knobs</h2>{knob_form(job, knob_values, viewer)}</section></div>",
        f'<h2>Rate, last {minutes} minutes</h2>{rate_charts(rates, minutes)}',
        _slices_table(slices, job),
        _errors_list(errors, sample_hidden, job),
        _audit_table(audit),
    ]
    return "".join(parts)


def knob_form(job: dict[str, Any], values: dict[str, Any], viewer: Viewer) -> str:
    """The live knobs of the job's kind, from worker/knobs.py: each current value, and, for a signed-in
    viewer of a job still running or paused, a field to change it (empty: unchanged; 'none': lifted)."""
    editable = viewer.signed_in and job["status"] in ("pending", "running", "paused")
    shown = {}
    for knob in knobs.for_kind(job["type"]):
        current = values.get(knob.name, knob.default)
        shown[knob] = "none" if current is None and knob.clearable else e(current if current is not None else "-")
    if not shown:
        return "<p class=muted>this kind has no live knobs</p>"
    if not editable:
        return ('<dl class="facts" id="knobs">'
                + "".join(f"<dt><code>{k.name}</code></dt><dd>{v}</dd>" for k, v in shown.items()) + "</dl>")
    rows = "".join(
        f'<label for="knob-{k.name}"><code>{k.name}</code></label><input type="text" id="knob-{k.name}"'
        f' name="{k.name}" inputmode="decimal" placeholder="{v}"><small>{e(k.described(clearing=True))}</small>'
        for k, v in shown.items())
    return (f'<form method="post" action="/jobs/{e(job["job_id"])}/set" class="changes" id="knobs">{_csrf(viewer)}'
            f"{rows}<span></span><button>apply at the next batch</button></form>")


def _table(table_id: str, headers: str, rows: list[str]) -> str:
    """A table: ``headers`` space-separated (``#name``: a number column, ``_`` a space in a name)."""
    heads = "".join(f'<th class="num">{h[1:]}</th>' if h.startswith("#") else f"<th>{h}</th>"
                    for h in (h.replace("_", " ") for h in headers.split()))
    return f'<table id="{table_id}"><thead><tr>{heads}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _cells(*values: Any, numbers: int = 0) -> str:
    """A row's cells, escaped, except values given as :class:`Markup`; the ``numbers`` after the first
    ``len(values) - numbers`` are right-aligned."""
    first_number = len(values) - numbers
    return "".join(f'<td{" class=num" if i >= first_number else ""}>{v if isinstance(v, Markup) else e(v)}</td>'
                   for i, v in enumerate(values))


def _code(value: Any) -> Markup:
    return Markup(f"<code>{e(value)}</code>")


def _bold(value: Any) -> Markup:
    return Markup(f"<b>{e(value)}</b>")


def _slices_table(slices: Rows, job: dict[str, Any]) -> str:
    if not slices:
        return "<h2>Slices</h2><p class=muted>not planned yet</p>"
    rows = [f'<tr data-slice="{s["slice_no"]}">'
            + _cells(s["slice_no"], s["status"] + (" · in flight" if s["in_flight"] else ""), _code(s["checkpoint"]),
                     _code(s["end_key"]), s["locked_by"] or "-", s["last_error"] or "", f"{s['processed_count']:,}",
                     f"{s['error_count']:,}", f"{s['batches']:,}", s["batch_size_now"] or "-", s["attempts"], numbers=5)
            + "</tr>" for s in slices]
    more = f" (first {len(slices)} of {job['slices']})" if job["slices"] and job["slices"] > len(slices) else ""
    return (f'<h2>Slices: {job["slices_done"]} of {job["slices"]} done, {job["slices_in_flight"]} in flight{more}</h2>'
            + _table("slices", "slice status cursor end worker last_error #processed #errors #batches #batch_size"
                               " #attempts", rows))


def _errors_list(errors: Rows, sample_hidden: str | None, job: dict[str, Any]) -> str:
    if not errors:
        return "<h2>Failed items</h2><p class=muted>none</p>"
    rows = ["<tr>" + _cells(x["created_at"], x["slice_no"], _code(x["item_key"]), _bold(x["error_type"]), x["message"],
                            _code(x["sample"]) if x.get("sample") is not None else "-") + "</tr>" for x in errors]
    note = f'<p class="muted" id="sample-hidden">samples hidden: {e(sample_hidden)}</p>' if sample_hidden else ""
    return (f"<h2>Failed items: the newest {len(errors)} of {job['error_count']:,}</h2>{note}"
            + _table("errors", "at slice item error message sample", rows))


def _audit_table(audit: list[dict[str, Any]]) -> str:
    if not audit:
        return "<h2>Audit trail</h2><p class=muted>no entries</p>"
    rows = []
    for a in audit:  # details: the trigger's from/to/reason, or `set`'s knob changes
        details = dict(a["details"] or {})
        reason = details.pop("reason", None)
        move = f'{details.pop("from")} → {details.pop("to")}' if "from" in details and "to" in details else ""
        rest = shorten(json.dumps(details, default=str, sort_keys=True), 300) if details else ""
        who = Markup(e(a["actor"]) + (f' <span class="muted">({e(a["db_user"])})</span>' if a["db_user"] else ""))
        rows.append("<tr>" + _cells(a["at"], who, Markup(f"{_bold(a['action'])} {e(move)}"), reason,
                                    _code(rest) if rest else "") + "</tr>")
    return "<h2>Audit trail</h2>" + _table("audit", "when who_(login) what reason details", rows)


def rate_series(rates: Rows, minutes: int, now: datetime | None = None) -> list[dict[str, Any]]:
    """One point per minute of the window (oldest first): rows/s, and the mean and longest batch seconds
    (None in a minute without batches). The current minute's rate is over the seconds it has had."""
    now = now or datetime.now(UTC)
    end = now.replace(second=0, microsecond=0)
    by_minute = {r["minute"].astimezone(UTC): r for r in rates}
    points = []
    for i in range(minutes - 1, -1, -1):
        minute = end - timedelta(minutes=i)
        r = by_minute.get(minute)
        span = max((now - minute).total_seconds(), 1.0) if i == 0 else 60.0
        points.append({
            "minute": minute.isoformat(),
            "rows_per_second": round(r["rows"] / span, 2) if r else 0.0,
            "errors": r["errors"] if r else 0,
            "batches": r["batches"] if r else 0,
            "mean_batch_seconds": round(r["batch_seconds"] / r["batches"], 3) if r and r["batches"] else None,
            "max_batch_seconds": round(r["max_batch_seconds"], 3) if r and r["batches"] else None,
        })
    return points


def rate_charts(rates: Rows, minutes: int) -> str:
    points = rate_series(rates, minutes)
    if not any(p["batches"] for p in points):
        return '<p class="muted" id="rate-chart">no batches in this window</p>'
    first, last = points[0]["minute"][11:16], points[-1]["minute"][11:16]
    return (f'<div id="rate-chart" data-points="{sum(1 for p in points if p["batches"])}">'
            + _chart("rows/s", [p["rows_per_second"] for p in points], None, first, last, "#2e7d32")
            + _chart("batch seconds (mean; longest dotted)", [p["mean_batch_seconds"] for p in points],
                     [p["max_batch_seconds"] for p in points], first, last, "#1565c0")
            + "</div>")


def _chart(label: str, values: list[float | None], extra: list[float | None] | None, first: str, last: str,
           colour: str) -> str:
    top = max([v for v in values + (extra or []) if v is not None] or [0]) or 1
    inner_w, inner_h = CHART_WIDTH - 2 * CHART_PAD, CHART_HEIGHT - 2 * CHART_PAD
    step = inner_w / max(len(values), 1)

    def xy(i: int, v: float) -> str:
        return f"{CHART_PAD + (i + 0.5) * step:.1f},{CHART_PAD + inner_h * (1 - v / top):.1f}"

    def lines(series: list[float | None], dash: str) -> str:
        runs: list[list[str]] = [[]]
        for i, v in enumerate(series):
            if v is None:
                runs.append([])
            else:
                runs[-1].append(xy(i, v))
        return "".join(f'<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{" ".join(run)}"/>'
                       if len(run) > 1 else (f'<circle cx="{run[0].split(",")[0]}" cy="{run[0].split(",")[1]}" r="2.5" '
                                             f'fill="{colour}"/>' if run else "") for run in runs)

    body = lines(values, "") + (lines(extra, ' stroke-dasharray="3 3" opacity="0.6"') if extra else "")
    return (f'<svg class="chart" viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" role="img" aria-label="{e(label)}">'
            f'<text x="{CHART_PAD}" y="16" font-size="13" fill="#333">{e(label)}</text>'
            f'<line x1="{CHART_PAD}" y1="{CHART_HEIGHT - CHART_PAD}" x2="{CHART_WIDTH - CHART_PAD}" '
            f'y2="{CHART_HEIGHT - CHART_PAD}" stroke="#bbb"/>'
            f'<line x1="{CHART_PAD}" y1="{CHART_PAD}" x2="{CHART_WIDTH - CHART_PAD}" y2="{CHART_PAD}" stroke="#eee"/>'
            f'<text x="{CHART_WIDTH - CHART_PAD}" y="{CHART_PAD - 4}" font-size="11" fill="#777" text-anchor="end">'
            f"{top:,.3g}</text>"
            f'<text x="{CHART_PAD}" y="{CHART_HEIGHT - 10}" font-size="11" fill="#777">{first} UTC</text>'
            f'<text x="{CHART_WIDTH - CHART_PAD}" y="{CHART_HEIGHT - 10}" font-size="11" fill="#777" '
            f'text-anchor="end">{last} UTC</text>{body}</svg>')


# -- fan-out runs (`tidegate web --targets`) --------------------------------------------------------

RUN_CONFIRM = {"cancel": "Cancel every job of run {run} in every target? Their slices stop at their next batch."}


def run_actions(summary: dict[str, Any]) -> list[str]:
    """The moves some job of the run allows (each is applied to the jobs it applies to)."""
    states = set(summary["by_status"])
    return [action for action in ("pause", "resume", "cancel")
            if states & {s.value for s in TRANSITIONS[action][0]}]


def run_actions_form(run_id: str, summary: dict[str, Any], viewer: Viewer) -> str:
    possible = run_actions(summary)
    if not viewer.signed_in or not possible:
        return ""
    buttons = []
    for action in possible:
        ask = RUN_CONFIRM.get(action)
        extra = f' class="danger" data-confirm="{e(ask.format(run=run_id[:8]))}"' if ask else ""
        buttons.append(f'<button formaction="/runs/{e(run_id)}/{action}" data-action="{action}"{extra}>'
                       f"{action} run</button>")
    return (f'<form method="post" class="actions" data-run="{e(run_id)}">{_csrf(viewer)}'
            '<input type="text" name="reason" placeholder="reason (audit)" maxlength="500">'
            f'{"".join(buttons)}</form>')


def _run_line(run_id: str, summary: dict[str, Any]) -> str:
    total = summary["total_estimate"]
    done = summary["processed_count"]
    rows = f"{done:,} of ~{total:,}" if total else f"{done:,}"
    unreadable = len(summary["unreadable"])
    return (f'<tr class="run" data-run="{e(run_id)}" data-status="{e(summary["status"])}" data-processed="{done}">'
            f'<td><a href="/runs/{e(run_id)}"><code>{e(run_id[:8])}</code></a></td>'
            f'<td class="status {e(summary["status"])}">{e(summary["status"])}</td>'
            f'<td class="num">{summary["jobs"]} in {summary["targets"] - unreadable}'
            + (f' <b class="unreadable">+{unreadable} unreadable</b>' if unreadable else "") + "</td>"
            f'<td class="num processed">{rows}</td><td class="num">{summary["error_count"]:,}</td>'
            f'<td class="num">{summary["rows_per_second"] or "-"}</td>'
            f'<td>{status.human_seconds(summary["eta_seconds"])}</td></tr>')


def _target_lines(run_id: str, parts: list[Any]) -> list[str]:
    """Under a run: one line per job of each target, or the target's error."""
    out = []
    for p in parts:
        if p.error:
            out.append(f'<tr class="target unreadable" data-run="{e(run_id)}" data-target="{e(p.target)}">'
                       f'<td>↳ {e(p.target)}</td><td class="status unreadable">unreadable</td>'
                       f'<td colspan=5>{e(p.error)}</td></tr>')
            continue
        for j in p.jobs:
            total = j["total_estimate"]
            rows = f'{j["processed_count"]:,} of ~{total:,}' if total else f'{j["processed_count"]:,}'
            out.append(f'<tr class="target" data-run="{e(run_id)}" data-target="{e(p.target)}"'
                       f' data-job="{e(j["job_id"])}" data-status="{e(j["status"])}"'
                       f' data-processed="{j["processed_count"]}">'
                       f'<td>↳ {e(p.target)} <code>{e(j["job_id"][:8])}</code></td>'
                       f'<td class="status {e(j["status"])}">{e(j["status"])}</td><td>{e(j["type"])}</td>'
                       f'<td class="num processed">{rows}</td><td class="num">{j["error_count"]:,}</td>'
                       f'<td class="num">{j["rows_per_second"] or "-"}</td>'
                       f'<td>{status.human_seconds(j["eta_seconds"])}'
                       + (f' <span class="muted">{e(j["reason"])}</span>' if j["reason"] else "") + "</td></tr>")
    return out


RUN_HEAD = ('<thead><tr><th>run / target</th><th>status</th><th class="num">jobs</th><th class="num">rows</th>'
            '<th class="num">errors</th><th class="num">rows/s</th><th>ETA</th></tr></thead>')


def runs_page(runs: list[tuple[str, dict[str, Any], list[Any]]], down: list[Any], targets: list[str]) -> str:
    """One line per run (state, rows, rate, ETA), its targets' jobs below it."""
    body = []
    for run_id, summary, parts in runs:
        body.append(_run_line(run_id, summary))
        body += _target_lines(run_id, parts)
    note = ""
    if down:
        note = ('<p class="banner error" id="unreadable">unreadable: '
                + "; ".join(f"<b>{e(p.target)}</b>: {e(p.error)}" for p in down) + "</p>")
    return (f'<h2>Runs over {len(targets)} target(s)</h2>{note}<table id="runs">{RUN_HEAD}<tbody>'
            f'{"".join(body) or "<tr><td colspan=7>no runs</td></tr>"}</tbody></table>')


def run_page(run_id: str, summary: dict[str, Any], parts: list[Any], viewer: Viewer) -> str:
    facts = {
        "run": f"<code>{e(run_id)}</code>",
        "status": f'<span class="status {e(summary["status"])}" id="run-status">{e(summary["status"])}</span>',
        "jobs": ", ".join(f"{n} {e(s)}" for s, n in sorted(summary["by_status"].items())) or "-",
        "processed": f'{summary["processed_count"]:,}' + (f' of ~{summary["total_estimate"]:,}'
                                                           if summary["total_estimate"] else ""),
        "errors": f'{summary["error_count"]:,}', "rows/s (running jobs)": e(summary["rows_per_second"] or "-"),
        "ETA (slowest target)": status.human_seconds(summary["eta_seconds"]),
        "unreadable targets": e(", ".join(summary["unreadable"]) or "none"),
    }
    return ('<section><h2>Run</h2><dl class="facts">'
            + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts.items()) + "</dl>"
            + run_actions_form(run_id, summary, viewer) + "</section>"
            + f'<h2>Targets</h2><table id="run-targets">{RUN_HEAD}<tbody>{"".join(_target_lines(run_id, parts))}'
              "</tbody></table>")
