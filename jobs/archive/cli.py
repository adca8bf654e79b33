"""Commands: `enqueue archive-range` (also two-phase: --mark-only, --move-marked), `enqueue unarchive-range`
(alias `enqueue reactivate`), `discover`, `archive status|report|guard|partition|layout`.

Enqueueing is a dry run unless ``--apply``: it plans the job in a rolled-back
transaction and prints the discovery report of what would move. ``--apply`` asks
for the typed word (ARCHIVE, or UNARCHIVE) on stdin unless ``--yes``; with no
answer (stdin closed, as in CI) it refuses and writes nothing.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from tidegate.jobs.archive import guard, ids, layouts, partition, report
from tidegate.jobs.archive.archive_range import DEFAULT_BATCH
from tidegate.jobs.cli import queue_options, submit
from tidegate.worker import knobs
from tidegate.worker.cliutil import Database, actor_option, database_option, echo_json, find_job
from tidegate.worker.errors import InvalidInput, quote

LAYOUT_HELP = (f"Event-store layout: a shipped one ({', '.join(layouts.SHIPPED)}), a registered one (tidegate archive"
               " layout list), or a TOML/YAML file (read by this command).")
SCHEMA_HELP = ("The schema of the layout's tables (Marten's DatabaseSchemaName, a Rillflow tenant schema): it"
               " qualifies the layout's bare table names; default: the layout's schema key, else the search path.")
schema_option = click.option("--schema", help=SCHEMA_HELP)


def selection_options(func: Any) -> Any:
    for option in reversed([
        click.option("--layout", required=True,
                     help=LAYOUT_HELP + " A file is registered when a job is enqueued (--apply)."),
        click.option("--type", "type_", help="Only streams of this type."),
        click.option("--where", "where", multiple=True,
                     help="Filter 'FIELD OP VALUE' (= != < <= > >= in, is null): a stream column the layout"
                          " allows, else a key of the create event's data. Repeatable (AND)."),
        click.option("--before", help="Only streams whose last activity is before this timestamp."),
        click.option("--tenant", help="Only this tenant's streams."),
        click.option("--stream", "streams", multiple=True, help="Only this stream id. Repeatable."),
        click.option("--ids-file", type=click.Path(dir_okay=False, path_type=Path),
                     help="Only the stream ids of this file: a CSV with an id or stream_id column (discover --csv"
                          " writes one), or one id a line."),
        schema_option,
        click.option("--limit", type=int, help="At most this many streams (in stream-id order)."),
    ]):
        func = option(func)
    return func


@dataclass
class Selection:
    payload: dict[str, Any]
    spec: dict[str, Any]  # the layout document, for the dry run in this process
    file: layouts.LayoutFile | None  # the user's own file, registered before a job naming it is enqueued


def _payload(db: Database, layout: str, type_: str | None, where: tuple[str, ...], before: str | None,
             tenant: str | None, streams: tuple[str, ...], limit: int | None, ids_file: Path | None = None,
             schema: str | None = None) -> Selection:
    with db.engine.connect() as conn:
        spec, found = layouts.for_cli(conn, layout, schema)
        if ids_file is not None:  # checked against the stream key's type, line by line
            key = layouts.resolve(conn, spec).key
            streams = (*streams, *ids.read(ids_file, key.type))
    payload: dict[str, Any] = {"layout": spec["name"]}
    if schema is not None:
        payload["schema"] = schema
    if type_ is not None:
        payload["type"] = type_
    if where:
        from tidegate.jobs.archive.selection import parse_where

        payload["where"] = [parse_where(w).to_json() for w in where]
    for name, value in (("before", before), ("tenant", tenant), ("limit", limit)):
        if value is not None:
            payload[name] = value
    if streams:
        payload["streams"] = list(streams)
    return Selection(payload, spec, found)


def _no_such_type(db: Database, chosen: Selection, pv: report.Preview) -> None:
    """--type that no stream has (hot or archived) is a typo, not an empty selection: say so, list the types."""
    if chosen.payload.get("type") is None or pv.totals["streams"]:
        return
    with db.engine.connect() as conn:
        present = report.types_present(conn, pv.params["layout_spec"], chosen.payload["type"])
    if present is not None:
        near = [t for t in present if t.lower() == chosen.payload["type"].lower()]
        raise InvalidInput(f"--type {quote(chosen.payload['type'])}: no stream has this type"
                           + (f" (did you mean {quote(near[0])}?)" if near else "")
                           + f"; the types present: {', '.join(present) or 'none'}")


def _register(db: Database, found: layouts.LayoutFile | None, actor: str) -> None:
    """A job names its layout: the user's file goes into archive_layouts first (or is already there)."""
    if found is None:
        return
    with db.engine.begin() as conn:
        done = layouts.register(conn, found, actor)
    click.echo(f"layout {found.name} {'registered' if done == 'added' else 'already registered'}"
               f" (sha256 {found.sha256[:12]})", err=True)


def _confirm(word: str) -> None:
    click.echo(f"Type {word} to enqueue this job for real: ", err=True, nl=False)
    answer = sys.stdin.readline() if sys.stdin is not None else ""
    if not answer:
        raise InvalidInput(f"no confirmation: stdin is closed. Type {word} interactively, or pass --yes (CI)")
    if answer.strip() != word:
        raise InvalidInput(f"confirmation {quote(answer.strip())} is not {word}; nothing was enqueued")


def _enqueue(db: Database, unarchive: bool, chosen: Selection, apply: bool, yes: bool, as_json: bool,
             opts: dict[str, Any], all_: bool = False) -> None:
    payload = chosen.payload
    pv = report.preview(db.engine, payload, unarchive=unarchive, spec=chosen.spec)
    verb = "unarchive" if unarchive else "archive"
    _no_such_type(db, chosen, pv)
    out = report.render_preview(pv, verb)
    click.echo(out, err=apply or as_json)
    if not apply:
        if as_json:
            echo_json({"dry_run": True, "by_type": pv.by_type, "totals": pv.totals})
        click.echo("dry run: nothing was written; add --apply to enqueue", err=True)
        return
    if "limit" not in payload and not all_ and not payload.get("streams") and not payload.get("from_audit"):
        n = pv.totals["streams"]
        raise InvalidInput(f"--apply without --limit or --all: this selection holds {n:,} stream(s). Stage it:"
                           f" --apply --limit {min(n, 50) or 50} first, check, then more (or --all for every one);"
                           " --stream, --ids-file and --from-audit name their streams and need neither")
    if not yes:
        _confirm(verb.upper())
    kind = "unarchive_range" if unarchive else "archive_range"
    found = chosen.file
    if opts.get("fanout") is not None and found is not None:  # --targets: the layout file goes into each target
        submit(db, kind, payload, {**opts, "as_json": as_json},
               prepare=lambda conn: layouts.register(conn, found, opts["actor"]))
        return
    _register(db, found, opts["actor"])
    submit(db, kind, payload, {**opts, "as_json": as_json})


# the knobs of archive jobs; row_limit stays a payload field here: --limit is the selection's
ARCHIVE_KNOBS = [k for k in knobs.for_kind("archive_range") if k.name != "row_limit"]


@click.command("archive-range")
@selection_options
@knobs.options(ARCHIVE_KNOBS, batch_size=DEFAULT_BATCH)
@click.option("--reason", help="Why (stored on the streams and in the audit). Required, but with --move-marked.")
@click.option("--force", is_flag=True, help="Archive cross-referenced candidates too.")
@click.option("--mark-only", is_flag=True,
              help="Phase 1 of two: mark the streams archived (the guard then redirects or refuses their appends);"
                   " their events stay where they are.")
@click.option("--move-marked", is_flag=True,
              help="Phase 2 of two: move the events of streams already marked archived (with --before: those"
                   " whose last activity is before it); their marks stay as they are.")
@click.option("--apply", is_flag=True, help="Enqueue for real (default: dry run); needs --limit N or --all.")
@click.option("--all", "all_", is_flag=True, help="With --apply and no --limit: every stream of the selection.")
@click.option("--yes", is_flag=True, help="Skip the typed ARCHIVE confirmation (CI).")
@queue_options
def enqueue_archive(db: Database, layout: str, type_: str | None, where: tuple[str, ...], before: str | None,
                    tenant: str | None, streams: tuple[str, ...], ids_file: Path | None, schema: str | None,
                    limit: int | None, reason: str | None, force: bool, mark_only: bool, move_marked: bool,
                    apply: bool, all_: bool, yes: bool, **opts: Any) -> None:
    """Archive whole event streams (dry run unless --apply); prints the job id."""
    if mark_only and move_marked:
        raise InvalidInput("--mark-only and --move-marked are the two phases: one at a time (neither does both)")
    if reason is None and not move_marked:
        raise InvalidInput("--reason is required: why these streams are archived (stored on them and in the audit)")
    given = knobs.take(opts, ARCHIVE_KNOBS)
    chosen = _payload(db, layout, type_, where, before, tenant, streams, limit, ids_file, schema)
    chosen.payload.update(given, force=force, owner=opts.pop("owner"))
    if reason is not None:
        chosen.payload["reason"] = reason
    if mark_only or move_marked:
        chosen.payload["phase"] = "mark" if mark_only else "move"
    _enqueue(db, False, chosen, apply, yes, opts.pop("as_json"), opts, all_)


@click.command("unarchive-range")
@selection_options
@click.option("--from-audit", "from_audit", metavar="JOB",
              help="The streams this archive job archived (its job id, or an unambiguous prefix).")
@knobs.options(ARCHIVE_KNOBS, batch_size=DEFAULT_BATCH)
@click.option("--reason", help="Why (stored in the audit).")
@click.option("--apply", is_flag=True, help="Enqueue for real (default: dry run); needs --limit N or --all"
                                            " unless --stream, --ids-file or --from-audit names the streams.")
@click.option("--all", "all_", is_flag=True, help="With --apply and no --limit: every stream of the selection.")
@click.option("--yes", is_flag=True, help="Skip the typed UNARCHIVE confirmation (CI).")
@queue_options
def enqueue_unarchive(db: Database, layout: str, type_: str | None, where: tuple[str, ...], before: str | None,
                      tenant: str | None, streams: tuple[str, ...], ids_file: Path | None, schema: str | None,
                      limit: int | None, from_audit: str | None, reason: str | None, apply: bool, all_: bool,
                      yes: bool, **opts: Any) -> None:
    """Move archived streams back to the hot tables and clear their marks (dry run unless --apply)."""
    given = knobs.take(opts, ARCHIVE_KNOBS)
    audit_job = find_job(db, from_audit) if from_audit is not None else None
    chosen = _payload(db, layout, type_, where, before, tenant, streams, limit, ids_file, schema)
    chosen.payload.update(given, owner=opts.pop("owner"))
    if reason:
        chosen.payload["reason"] = reason
    if audit_job:
        chosen.payload["from_audit"] = audit_job
    _enqueue(db, True, chosen, apply, yes, opts.pop("as_json"), opts, all_)


# `enqueue reactivate`: Rillflow's word for unarchive (hot writes resume), the same command
enqueue_reactivate = click.Command("reactivate", callback=enqueue_unarchive.callback, params=enqueue_unarchive.params,
                                   help="Reactivate archived streams: unarchive-range under Rillflow's name (clears"
                                        " the marks, brings back what was moved; dry run unless --apply).")
enqueue_archive.tidegate_enqueue = True  # type: ignore[attr-defined]
enqueue_unarchive.tidegate_enqueue = True  # type: ignore[attr-defined]
enqueue_reactivate.tidegate_enqueue = True  # type: ignore[attr-defined]


@click.command("discover")
@selection_options
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the candidate stream ids to this CSV file.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@database_option
def discover(db: Database, layout: str, type_: str | None, where: tuple[str, ...], before: str | None,
             tenant: str | None, streams: tuple[str, ...], ids_file: Path | None, schema: str | None,
             limit: int | None, csv_path: Path | None, as_json: bool) -> None:
    """The discovery report: archive candidates per stream type, create-only vs with updates,
    their events, and the cross-reference check. Reads only."""
    chosen = _payload(db, layout, type_, where, before, tenant, streams, limit, ids_file, schema)
    chosen.payload["owner"] = "discover"
    pv = report.preview(db.engine, chosen.payload, csv_path=csv_path, spec=chosen.spec)
    _no_such_type(db, chosen, pv)
    if as_json:
        echo_json({"by_type": pv.by_type, "totals": pv.totals, "cross_reference_check": report.xref_check(pv)})
    else:
        click.echo(report.render_preview(pv, "archive").rsplit("\n", 1)[0])
    if csv_path is not None:
        click.echo(f"{pv.totals['streams']} candidate stream id(s) written to {csv_path}", err=True)


@click.group("archive")
def archive() -> None:
    """Event-store archive: status, run summaries, the append guard."""


@archive.command("status")
@click.option("--layout", required=True, help=LAYOUT_HELP)
@schema_option
@click.option("--json", "as_json", is_flag=True)
@database_option
def archive_status(db: Database, layout: str, schema: str | None, as_json: bool) -> None:
    """Hot vs archived streams and events per stream type, and table sizes."""
    st = report.status(db.engine, layout, schema)
    if as_json:
        echo_json(st)
        return
    click.echo(f"layout {st['layout']} ({st['strategy']})")
    click.echo(f"{'stream type':<28}{'hot streams':>13}{'hot events':>13}{'archived':>11}{'arch. events':>14}")
    for r in st["by_type"]:
        click.echo(f"{str(r['stream_type'])[:27]:<28}{r['hot_streams']:>13,}{r['hot_events']:>13,}"
                   f"{r['archived_streams']:>11,}{r['archived_events']:>14,}")
    for name, t in st["tables"].items():
        click.echo(f"table {name}: {t['bytes'] / 1048576:.1f} MiB, ~{t['rows_estimate']:,} rows")
    for p in st["partitions"]:
        click.echo(f"{'  ' * p['level']}partition {p['partition']} ({p['bound']}): {p['bytes'] / 1048576:.1f} MiB,"
                   f" ~{p['rows_estimate']:,} rows")
    click.echo(f"archive guard on {st['layout']}'s events table: {st['guard']}")


@archive.command("report")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@database_option
def archive_report(db: Database, job_id: str, as_json: bool) -> None:
    """The run's summary: attempted, archived, skipped, failed, elapsed, candidates left (JOB_ID: a job id or
    an unambiguous prefix)."""
    s = report.summary(db.engine, find_job(db, job_id))
    if as_json:
        echo_json(s)
        return
    for key, value in s.items():
        click.echo(f"{key.replace('_', ' '):<22}{value}")


@archive.command("guard")
@click.option("--layout", required=True, help=LAYOUT_HELP)
@click.option("--mode", required=True, type=click.Choice(guard.MODES),
              help="reject: appends to archived streams fail; redirect: they go to the archive; off: remove.")
@schema_option
@actor_option
@database_option
def archive_guard(db: Database, layout: str, mode: str, schema: str | None, actor: str) -> None:
    """Install (or remove) the trigger that guards archived streams against appends."""
    done = guard.set_guard(db.engine, layout, mode, actor, schema)
    click.echo(f"archive guard on {done['events_table']}: {mode}")


@archive.command("partition")
@click.option("--layout", default="rillflow_partitioned", show_default=True,
              help=LAYOUT_HELP + " Its events flag must be a value its events table is LIST-partitioned on.")
@click.option("--retention", required=True, help="The retention class: one of the layout's two values (hot, cold).")
@click.option("--month", required=True, help="The first day of the month, e.g. 2025-01-01.")
@click.option("--detach", "action", flag_value="detach", help="Detach the month's partition, once proven empty.")
@click.option("--drop", "action", flag_value="drop", help="Detach and drop the month's partition, once proven empty.")
@schema_option
@actor_option
@database_option
def archive_partition(db: Database, layout: str, retention: str, month: str, action: str | None, schema: str | None,
                      actor: str) -> None:
    """Create a month's partition ahead (idempotent), or detach/drop an exhausted one (refused unless empty)."""
    done = partition.maintain(db.engine, layout, retention, month, action or "create", actor, schema)
    click.echo(f"partition {done['partition']} of {done['parent']}: {done['done']}")


@click.command("watch-deletions")
@click.option("--layout", required=True, help=LAYOUT_HELP + " A file is registered first: the jobs name it.")
@click.option("--map", "mapping", multiple=True, required=True,
              help="EVENT_TYPE=STREAM_TYPE: archive the stream such an event is appended to (STREAM_TYPE * = any).")
@click.option("--name", default="default", show_default=True, help="Watcher name (its cursor).")
@click.option("--owner", default="watch-deletions", show_default=True, help="Owner of the jobs it enqueues.")
@click.option("--interval", default=5.0, show_default=True, type=click.FloatRange(0.05, 3600),
              help="Seconds between polls.")
@click.option("--lookback", default=10_000, show_default=True, type=click.IntRange(0, 10**9),
              help="Sequence numbers re-read behind the cursor (late commits).")
@click.option("--batch-size", default=500, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--once", is_flag=True, help="One poll, then exit.")
@schema_option
@actor_option
@database_option
def watch_deletions(db: Database, layout: str, mapping: tuple[str, ...], name: str, owner: str, interval: float,
                    lookback: int, batch_size: int, once: bool, schema: str | None, actor: str) -> None:
    """Tail the events table for deletion events and enqueue archive-range work for their streams."""
    import threading

    from tidegate.jobs.archive import watch
    from tidegate.worker import signals

    stop = threading.Event()
    signals.on_signals(lambda _signum: stop.set())  # SIGTERM or SIGINT stop it between polls
    with db.engine.connect() as conn:
        spec, found = layouts.for_cli(conn, layout, schema)
        layouts.resolve(conn, spec)  # a bad --schema is refused before the first poll
    _register(db, found, actor)
    pairs = watch.parse_map(mapping)
    while True:
        done = watch.poll(db.engine, name, spec["name"], pairs, owner=owner, actor=actor, lookback=lookback,
                          batch_size=batch_size, schema=schema)
        if done["job_id"] or once:
            click.echo(json.dumps(done), err=not once)
        if once or stop.wait(interval):
            return


@archive.group("layout")
def layout_group() -> None:
    """Layouts a payload may name: the shipped ones and those an operator registered."""


@layout_group.command("add")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--replace", is_flag=True, help="Replace a registered layout of the same name (jobs already planned"
                                              " keep the layout they were planned with).")
@actor_option
@database_option
def layout_add(db: Database, file: Path, replace: bool, actor: str) -> None:
    """Check FILE (shape, then every name against the catalog) and register it under its name."""
    found = layouts.read_file(str(file))
    with db.engine.begin() as conn:
        done = layouts.register(conn, found, actor, replace=replace)
    click.echo(f"layout {found.name}: {done} (sha256 {found.sha256})")


@layout_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@database_option
def layout_list(db: Database, as_json: bool) -> None:
    """The shipped layouts and the registered ones."""
    with db.engine.connect() as conn:
        rows = layouts.listing(conn)
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        origin = "shipped" if r["source"] == "shipped" else f"by {r['added_by']} at {r['added_at']:%Y-%m-%d %H:%M}"
        click.echo(f"{r['name']:<24}{r['strategy'] or '?':<6}{(r['sha256'] or '')[:12]:<14}{origin}")


COMMANDS = [enqueue_archive, enqueue_unarchive, enqueue_reactivate, discover, archive, watch_deletions]
