"""examples/raw_linkset.py (seed 001's raw-linkset backfill), run as a user deploys it: the module on
PYTHONPATH, named in $TIDEGATE_HANDLERS or `tidegate worker --handlers`, enqueued through the real CLI and
run by a real pool. docs/handlers.md walks through this file."""

from __future__ import annotations

import ast
import json
import random
import signal
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text

from examples import raw_linkset
from examples.raw_linkset import RAW_LINKSET, Contended
from tests.conftest import ROOT, job_row, parse_python, run_cli, scalar, wait_for

# The user's table, as docs/handlers.md shows it (a test below checks that the guide has this text).
DDL = """\
CREATE SCHEMA concelier;
CREATE TABLE concelier.advisory_observations (
    id         bigint PRIMARY KEY,
    tenant     text        NOT NULL,
    document   jsonb       NOT NULL,
    version    bigint      NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON concelier.advisory_observations (created_at);
"""
ENV = {"TIDEGATE_HANDLERS": "examples.raw_linkset"}
HISTORICAL = 311  # documents created before the cut-off; ids 1..311, in created_at order
BAD = 57  # its content.raw is not an object: a bad item
LATER = range(401, 421)  # created after the cut-off by code that writes rawLinkset itself
BASE = datetime(2025, 1, 1, tzinfo=UTC)
CUT_OFF = datetime(2025, 10, 31, tzinfo=UTC)  # the raw linkset exists from here on (seed 001)
INSERT = text("INSERT INTO concelier.advisory_observations (id, tenant, document, version, created_at, updated_at)"
              " VALUES (:id, :tenant, CAST(:document AS jsonb), :version, :created_at, :updated_at)")
SNAPSHOT = "SELECT id, tenant, document, version, created_at, updated_at FROM concelier.advisory_observations"


def document(i: int, rng: random.Random) -> dict[str, Any]:
    """An observation as Concelier stores it: upstream content, and the deduped, normalised linkset."""
    cves = [f"CVE-2024-{rng.randint(1000, 1020)}" for _ in range(rng.randint(1, 3))]
    aliases = [*cves, f"GHSA-{i:04x}-q2w3", cves[0].lower()]  # duplicates and case as upstream wrote them
    affected = [{"purl": f"pkg:npm/lib{n}@{rng.randint(1, 9)}.0.0"} for n in range(rng.randint(0, 2))]
    if rng.random() < 0.5:
        affected.append({"cpe": f"cpe:2.3:a:vendor:lib{i}:*:*:*:*:*:*:*:*"})
    references = [{"type": "advisory", "url": f"https://github.com/advisories/GHSA-{i:04x}-q2w3"}]
    return {"advisoryKey": f"GHSA-{i:04x}-q2w3", "source": "ghsa",
            "upstream": {"documentId": f"GHSA-{i:04x}-q2w3", "contentHash": f"sha256:{i:064x}"},
            "content": {"raw": {"aliases": aliases, "affected": affected, "references": references}},
            "linkset": {"aliases": sorted({a.lower() for a in aliases}),
                        "purls": sorted({a["purl"] for a in affected if "purl" in a})}}


def seed(engine: Engine) -> None:
    rng = random.Random(1)
    rows = []
    for i in [*range(1, HISTORICAL + 1), *LATER]:
        doc = document(i, rng)
        if i == BAD:
            doc["content"]["raw"] = "<advisory/>"
        elif i % 30 == 0 or i in LATER:  # already has the field: written by the new code
            doc["rawLinkset"] = raw_linkset.raw_linkset(doc)
        created = BASE + timedelta(hours=12 * i) if i <= HISTORICAL else CUT_OFF + timedelta(hours=i)
        rows.append({"id": i, "tenant": "acme" if i % 3 else "globex", "document": json.dumps(doc),
                     "version": rng.randint(1, 4), "created_at": created,
                     "updated_at": created + timedelta(days=rng.randint(0, 30))})
    with engine.begin() as conn:
        conn.execute(text(DDL))
        conn.execute(INSERT, rows)


def snapshot(engine: Engine) -> dict[int, dict[str, Any]]:
    with engine.connect() as conn:
        return {r["id"]: dict(r) for r in conn.execute(text(SNAPSHOT)).mappings()}


def backfilled(before: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """What a clean run leaves: rawLinkset added and version bumped once on every historical document that
    lacked it (but the bad one); everything else, and every updated_at, as it was."""
    after = {}
    for i, row in before.items():
        doc = row["document"]
        if i <= HISTORICAL and i != BAD and "rawLinkset" not in doc:
            row = {**row, "document": {**doc, "rawLinkset": raw_linkset.raw_linkset(doc)},
                   "version": row["version"] + 1}
        after[i] = row
    return after


def enqueue(db_url: str, *extra: str) -> str:
    return run_cli(db_url, "enqueue", "backfill-range", "--handler", "raw_linkset", "--from", "2000-01-01",
                   "--to", "2025-10-31", "--batch-size", "40", "--owner", "tests", *extra, env=ENV).stdout.strip()


def blocked_by(engine: Engine, pid: int) -> int:
    """Backends waiting for a lock that backend ``pid`` holds."""
    return int(scalar(engine, "SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))",
                      pid=pid))


# -- the handler alone -------------------------------------------------------------------------------


def test_transform_derives_the_raw_linkset_in_upstream_order_with_duplicates_and_pointers():
    doc = {"content": {"raw": {"aliases": ["CVE-2024-1000", "GHSA-aaaa", "cve-2024-1000"],
                               "affected": [{"purl": "pkg:npm/a@1.0.0", "cpe": "cpe:2.3:a:v:a"}, {"purl": "pkg:npm/b"}],
                               "references": [{"type": "advisory", "url": "https://example.org/a"}]}}}
    assert list(RAW_LINKSET.transform({"id": 7, "version": 3, "document": doc})) == [{
        "id": 7, "version": 3, "raw_linkset": {
            "aliases": [{"value": "CVE-2024-1000", "pointer": "/content/raw/aliases/0"},
                        {"value": "GHSA-aaaa", "pointer": "/content/raw/aliases/1"},
                        {"value": "cve-2024-1000", "pointer": "/content/raw/aliases/2"}],
            "purls": [{"value": "pkg:npm/a@1.0.0", "pointer": "/content/raw/affected/0/purl"},
                      {"value": "pkg:npm/b", "pointer": "/content/raw/affected/1/purl"}],
            "cpes": [{"value": "cpe:2.3:a:v:a", "pointer": "/content/raw/affected/0/cpe"}],
            "references": [{"type": "advisory", "url": "https://example.org/a",
                            "pointer": "/content/raw/references/0"}]}}]
    assert list(RAW_LINKSET.transform({"id": 7, "version": 4, "document": {**doc, "rawLinkset": {}}})) == []
    for bad in ({}, {"content": {"raw": "<advisory/>"}}, {"content": {"raw": {"aliases": [7]}}},
                {"content": {"raw": {"references": [{"type": "web"}]}}}, ["not", "an", "object"]):
        with pytest.raises(ValueError):
            RAW_LINKSET.transform({"id": 8, "version": 1, "document": bad})


def test_write_derives_from_the_current_version_of_a_changed_document_and_gives_up_after_its_attempts(engine):
    seed(engine)
    stale = document(1, random.Random(99))  # what the batch read; the table has another version since
    with engine.begin() as conn:
        current = conn.execute(text("SELECT document, version FROM concelier.advisory_observations WHERE id = 1")).one()
        RAW_LINKSET.write(conn, [{"id": 1, "version": current.version - 1, "raw_linkset": raw_linkset.raw_linkset(stale)}])
        now = conn.execute(text("SELECT document, version FROM concelier.advisory_observations WHERE id = 1")).one()
    assert now.document == {**current.document, "rawLinkset": raw_linkset.raw_linkset(current.document)}
    assert now.version == current.version + 1

    with engine.begin() as conn:  # changed into a bad document: the batch runs again, and files it as a bad item
        conn.execute(text("UPDATE concelier.advisory_observations SET document = '{}', version = version + 1"
                          " WHERE id = 3"))
        with pytest.raises(Contended, match="changed into a bad one: content.raw is missing"):
            RAW_LINKSET.write(conn, [{"id": 3, "version": 1, "raw_linkset": {}}])

    with engine.begin() as conn:  # a writer that wins every time: a trigger skips each update of id 2
        conn.execute(text("CREATE FUNCTION skip_update() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;"
                          "CREATE TRIGGER always_changed BEFORE UPDATE ON concelier.advisory_observations"
                          " FOR EACH ROW WHEN (OLD.id = 2) EXECUTE FUNCTION skip_update()"))
    with engine.begin() as conn:
        row = conn.execute(text("SELECT id, version, document FROM concelier.advisory_observations WHERE id = 2")
                           ).mappings().one()
        with pytest.raises(Contended, match=rf"1 observations changed under each of {raw_linkset.ATTEMPTS} writes"):
            RAW_LINKSET.write(conn, list(RAW_LINKSET.transform(row)))


def test_the_example_imports_only_the_public_api():
    tree = parse_python((ROOT / "examples/raw_linkset.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert {m for m in imported if m and m.startswith("tidegate")} == {"tidegate"}


def test_the_guide_shows_the_tested_table_and_quotes_the_example_as_it_is():
    guide = (ROOT / "docs/handlers.md").read_text()
    assert DDL in guide
    example = (ROOT / "examples/raw_linkset.py").read_text()
    quoted = guide.split("```python\n")[1].split("```")[0]
    assert [line for line in quoted.splitlines() if line.strip() and "..." not in line and line not in example] == []


# -- the real thing: CLI, pool, signals --------------------------------------------------------------


@pytest.mark.slow
def test_a_pool_backfills_every_document_once_keeps_updated_at_and_a_rerun_changes_nothing(engine, db_url, pools):
    seed(engine)
    before = snapshot(engine)
    job = enqueue(db_url, "--concurrency", "2")
    # the pool loads the module with --handlers; the CLI above with $TIDEGATE_HANDLERS
    pool = pools("--concurrency", "2", "--drain", "--handlers", "examples.raw_linkset", env={"TIDEGATE_HANDLERS": ""})
    assert pool.wait() == 0, pool.output()

    after = snapshot(engine)
    assert after == backfilled(before)
    assert sum(1 for i in after if after[i]["version"] != before[i]["version"]) == HISTORICAL - 1 - HISTORICAL // 30
    row = job_row(engine, job)
    assert (row.status, row.processed_count, row.error_count) == ("done", HISTORICAL, 1)
    errors = run_cli(db_url, "errors", job, "--json", env=ENV).stdout
    assert [(e["item_key"], e["error_type"]) for e in json.loads(errors)] == [(str(BAD), "ValueError")]
    assert "content.raw is missing or not an object" in errors
    assert run_cli(db_url, "verify", job, env=ENV).returncode == 0

    again = enqueue(db_url, "--concurrency", "2")
    assert pools("--concurrency", "2", "--drain", env=ENV).wait() == 0
    assert snapshot(engine) == after
    assert job_row(engine, again).status == "done"


@pytest.mark.slow
def test_a_document_another_writer_changes_mid_batch_is_read_again_and_backfilled_from_its_new_version(
        engine, db_url, pools):
    seed(engine)
    changed = [100, 101, 102, 103, 104]  # in one batch: (80, 120]
    writer_time = datetime(2025, 11, 5, tzinfo=UTC)
    with engine.connect() as writer:
        writer.begin()
        writer.execute(text("""UPDATE concelier.advisory_observations
                               SET document = jsonb_set(document, '{content,raw,aliases}',
                                                        document #> '{content,raw,aliases}' || '["CVE-2025-9999"]'),
                                   version = version + 1, updated_at = :at
                               WHERE id = ANY(:ids)"""), {"at": writer_time, "ids": changed})
        written = snapshot(engine)  # another session: the versions before the writer's commit
        pid = writer.execute(text("SELECT pg_backend_pid()")).scalar_one()
        job = enqueue(db_url)
        pool = pools("--concurrency", "1", "--drain", env=ENV)
        # the batch read the old versions and its UPDATE now waits for the writer's row locks
        wait_for(lambda: blocked_by(engine, pid), timeout=60, what="the backfill to wait for the writer")
        writer.commit()
    assert pool.wait() == 0, pool.output()

    after = snapshot(engine)
    for i in changed:
        row = after[i]
        assert row["document"]["rawLinkset"]["aliases"][-1]["value"] == "CVE-2025-9999"
        assert row["document"]["rawLinkset"] == raw_linkset.raw_linkset(row["document"])
        assert row["version"] == written[i]["version"] + 2  # the writer's bump, then the backfill's
        assert row["updated_at"] == writer_time
    # the handler's own retry took it: no batch failed (tidegate's retry of a whole batch would also end
    # well, later, after a backoff, and counting an attempt against the job)
    assert scalar(engine, "SELECT attempts FROM queue_jobs WHERE id = :j", j=job) == 0
    unchanged = {i: r for i, r in backfilled(written).items() if i not in changed}
    assert {i: r for i, r in after.items() if i not in changed} == unchanged


@pytest.mark.slow
def test_a_worker_sigkilled_mid_batch_and_restarted_ends_with_the_data_of_a_clean_run(engine, db_url, pools):
    seed(engine)
    before = snapshot(engine)
    with engine.connect() as holder:
        holder.begin()  # holds document 200's row lock, so the batch (160, 200] waits in its UPDATE
        holder.execute(text("SELECT 1 FROM concelier.advisory_observations WHERE id = 200 FOR UPDATE"))
        pid = holder.execute(text("SELECT pg_backend_pid()")).scalar_one()
        job = enqueue(db_url)
        pool = pools("--concurrency", "1", "--drain", "--lease", "2", env=ENV)
        wait_for(lambda: blocked_by(engine, pid), timeout=60, what="a batch to wait in its UPDATE")
        assert job_row(engine, job).processed_count == 160  # 4 batches of 40 committed before the kill
        (worker,) = pool.workers()
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        holder.rollback()
    assert pool.wait() == 0, pool.output()  # the pool restarted the worker, which finished the job

    assert snapshot(engine) == backfilled(before)
    row = job_row(engine, job)
    assert (row.status, row.processed_count, row.error_count) == ("done", HISTORICAL, 1)
    assert scalar(engine, "SELECT count(*) FROM etl_errors WHERE job_id = :j", j=job) == 1
    assert "died (signal SIGKILL) during a batch" in pool.output()
