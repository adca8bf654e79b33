"""Archive selection time against store size, on Marten 7's own tables and indexes (issue 16.2).

Stores of 25,000 and 250,000 streams (about 10 events each) built as Marten 7 builds them with
archived-stream partitioning (tests/event_stores.py MARTEN7: both tables partitioned on
is_archived, primary key (seq_id, is_archived), unique (stream_id, version, is_archived)),
filled the seed's way: six entity types, two thirds of the streams non-LuckBox, a third of them
create-only, every event appended in time order (creates first, updates later, so a stream's
events are spread over the table). Timed, on each store, with tidegate's own statements:

* plan: the worker's planning query (``--where DataSource!=LuckBox``, events not counted), as
  the report's recount runs it;
* discover: the same selection with each stream's events counted (discover and the dry run);
* snapshot: the dry run's whole planning step (the candidates inserted into archive_candidates),
  rolled back;
* old: the per-stream ``ORDER BY seq_id LIMIT 1`` lookup this replaced, on the same store.

Selection time should grow about linearly with the store: the report gives, per statement,
the time per stream on each store and their ratio (1.0 = linear).
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from pathlib import Path

from sqlalchemy import text

from bench.common import engine_for, scratch_database, server_url

SIZES = (25_000, 250_000)
REPEATS = 3
WHERE = ["DataSource!=LuckBox"]
TYPES = ["participant", "sporting_event", "venue", "team", "season", "competition"]
FILL = [
    """INSERT INTO mt_streams (id, type, version, timestamp, created)
       SELECT md5('s' || g)::uuid, (CAST(:types AS text[]))[1 + (g % 40) / 7 % 6],
              CASE WHEN g % 3 = 0 THEN 1 ELSE 2 + g % 27 END,
              '2024-01-01'::timestamptz + make_interval(secs => g), '2024-01-01'::timestamptz + make_interval(secs => g)
       FROM generate_series(1, :n) g""",
    """INSERT INTO mt_events (id, stream_id, version, data, type)
       SELECT md5(s.id::text || v)::uuid, s.id, v,
              jsonb_build_object('DataSource', CASE WHEN abs(hashtext(s.id::text)) % 3 = 0 THEN 'LuckBox'
                                                    WHEN abs(hashtext(s.id::text)) % 3 = 1 THEN 'FoxSports'
                                                    ELSE 'StatsPerform' END, 'Name', 'entity ' || v, 'Version', v),
              s.type || CASE WHEN v = 1 THEN '_created_event' ELSE '_updated_event' END
       FROM mt_streams s, generate_series(1, s.version) v ORDER BY v, s.created""",
]
OLD = ("SELECT count(*) FROM mt_streams s WHERE NOT s.is_archived AND (SELECT e.data ->> 'DataSource'"
       " FROM mt_events e WHERE e.stream_id = s.id ORDER BY e.seq_id LIMIT 1) <> 'LuckBox'")


def _stores():  # type: ignore[no-untyped-def]
    path = Path(__file__).resolve().parent.parent / "tests/event_stores.py"
    spec = importlib.util.spec_from_file_location("event_stores", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build(engine, n: int) -> dict:  # type: ignore[no-untyped-def]
    statements = [s for s in _stores().MARTEN7.strip().split(";\n") if s.strip()]
    fk = [s for s in statements if s.lstrip().startswith("ALTER TABLE")]  # added after the load, as a restore does
    with engine.begin() as conn:
        for s in statements:
            if s not in fk:
                conn.execute(text(s))
        for s in FILL:
            conn.execute(text(s), {"n": n, "types": TYPES})
        for s in fk:
            conn.execute(text(s))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
        conn.execute(text("CHECKPOINT"))
        events = conn.execute(text("SELECT count(*) FROM mt_events")).scalar()
    return {"streams": n, "events": int(events)}


def _median(fn, repeats: int) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def _measure(engine, repeats: int, old: bool) -> dict:  # type: ignore[no-untyped-def]
    from tidegate.jobs.archive import layouts, selection
    from tidegate.jobs.archive.archive_range import ARCHIVE

    out: dict = {}
    with engine.connect() as conn:
        layout = layouts.resolve(conn, layouts.shipped("marten"))
        for name, count in (("plan", False), ("discover", True)):
            q = selection.candidates(conn, layout, {"where": WHERE}, unarchive=False, count_events=count)
            sql = q.within("SELECT count(*) FROM ({query}) c")
            out[name], found = _median(lambda sql=sql, q=q: conn.execute(sql, q.params).scalar(), repeats)
            out[name + "_streams"] = int(found)

        def snapshot() -> int:
            try:
                return ARCHIVE.plan(conn, {"layout": "marten", "where": WHERE, "owner": "bench"},
                                    count_events=True).total_estimate or 0
            finally:
                conn.rollback()

        out["snapshot"], planned = _median(snapshot, repeats)
        out["snapshot_streams"] = int(planned)
        if old:
            out["old"], found = _median(lambda: conn.execute(text(OLD)).scalar(), 1)
            out["old_streams"] = int(found)
    return out


def run(url: str | None = None, sizes: tuple[int, ...] = SIZES, repeats: int = REPEATS, old: bool = True) -> dict:
    server = url or server_url()
    out: dict = {"sizes": [], "repeats": repeats}
    for n in sizes:
        with scratch_database(server) as db:
            engine = engine_for(db)
            with engine.connect() as conn:
                out["server"] = conn.execute(text("SHOW server_version")).scalar()
            t0 = time.perf_counter()
            store = _build(engine, n)
            print(f"{n:,} streams, {store['events']:,} events built in {time.perf_counter() - t0:.0f}s", flush=True)
            store.update(_measure(engine, repeats, old))
            engine.dispose()
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in store.items()}, flush=True)
        out["sizes"].append(store)
    return out


STATEMENTS = [("plan", "the worker's plan / the report's recount (events not counted)"),
              ("discover", "discover and the dry run (events counted)"),
              ("snapshot", "the dry run's planning step (snapshot into archive_candidates)"),
              ("old", "before: the per-stream ORDER BY seq_id LIMIT 1 lookup")]


def report(r: dict) -> str:
    sizes = r["sizes"]
    small, big = sizes[0], sizes[-1]
    head = " | ".join(f"{s['streams']:,} streams ({s['events']:,} events), s" for s in sizes)
    lines = [f"### Archive selection against store size (Marten 7 tables and indexes, --where DataSource!=LuckBox,"
             f" PostgreSQL {r.get('server', '?')})", "",
             f"| statement | {head} | growth | time per stream, ratio (1.0 = linear) |",
             "|---|" + "---|" * len(sizes) + "---|---|"]
    for key, label in STATEMENTS:
        if key not in small or key not in big:
            continue
        cells = " | ".join(f"{s[key]:.2f} ({s[key] / s['streams'] * 1e6:.1f} us/stream)" for s in sizes)
        growth = big[key] / small[key]
        per_stream = growth / (big["streams"] / small["streams"])
        lines.append(f"| {label} | {cells} | {growth:.1f}x | {per_stream:.2f} |")
    selected = ", ".join(f"{s['plan_streams']:,} of {s['streams']:,}" for s in sizes)
    same = all(s["plan_streams"] == s["discover_streams"] == s["snapshot_streams"] == s.get("old_streams",
                                                                                            s["plan_streams"])
               for s in sizes)
    olds = ", ".join(f"{s['old'] / s['plan']:.1f}x at {s['streams']:,}" for s in sizes if "old" in s)
    lines += ["", f"Streams selected: {selected} (every statement selected the same streams:"
                  f" {'yes' if same else 'NO'})."
                  f" Median of {r['repeats']} runs for tidegate's statements, one run of the old lookup. Old over"
                  f" new (the plan statement) on the same store: {olds}."]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(run()))
