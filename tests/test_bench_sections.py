"""The fan-out and Citus bench sections (bench/fanout.py, bench/citus.py) run end to end at a tiny size and
leave every row done: a smoke test of the bench code, no timing asserted."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_the_fanout_section_runs_and_every_database_is_done(pg_server):
    from bench import fanout

    r = fanout.run(url=pg_server, rows=80, batch=10, counts=(1, 4))
    runs = r["runs"]
    assert set(runs) == {("multi", 1, None), ("multi", 4, None), ("separate", 4, None)}
    for key, x in runs.items():
        assert "failed" not in x, (key, x)
        assert x["all_rows"], key  # every database's job processed its share: 80 snapshots in all
        assert x["peak_connections"] >= 1, key
        assert 0 < x["fairness"] <= 1, key
    assert runs[("separate", 4, None)]["os_processes"] == 8  # 4 pools of a supervisor and a worker
    text = fanout.report(r)
    assert "one pool, 2 processes, 4 databases" in text and "4 separate pools" in text and "failed" not in text


@pytest.mark.xdist_group("citus")
def test_the_citus_section_runs_or_says_why_not():
    from bench import citus

    r = citus.run(rows=300, batch=100, rounds=1, concurrency=(1,))
    if "skipped" in r:
        assert citus.report(r).endswith(f"Skipped: {r['skipped']}.")
        pytest.skip(f"Citus: {r['skipped']}")
    assert r["same_data"] and r["troops"] > 300
    assert set(r["runs"]) == {("single node", "single"), ("citus", "single"), ("single node", "c1"), ("citus", "c1")}
    assert "| citus | tidegate, SQL handler, concurrency 1 |" in citus.report(r)
