"""Targets (issue 15 point 1): named databases, `tidegate targets add/list/remove`, `--target` on every
job command, `db upgrade --all-targets`, and the errors of bad names, unknown names, bad URLs and
unmigrated targets."""

from __future__ import annotations

import json
import stat

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import run_cli, scalar
from tests.fixtures import LOG_HANDLER, make_items

SECRET = "s3cr3t-Pa55"


def with_password(url: str) -> str:
    return make_url(url).set(password=SECRET).render_as_string(hide_password=False)


@pytest.fixture
def tfile(tmp_path):
    return {"TIDEGATE_TARGETS_FILE": str(tmp_path / "t" / "targets.toml"), "TIDEGATE_TARGETS": ""}


def cli(env: dict, *args: str, check: bool = True):
    # DATABASE_URL points nowhere: a command that ignored --target would fail, not pass by accident
    return run_cli("postgresql://nobody@127.0.0.1:1/none", *args, env=env, check=check)


def test_add_list_remove_and_upgrade_all_targets(db_url, empty_db, tfile, tmp_path):
    cli(tfile, "targets", "add", "ready", with_password(db_url))
    cli(tfile, "targets", "add", "fresh", with_password(empty_db))
    path = tmp_path / "t" / "targets.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    listed = {r["name"]: r for r in json.loads(cli(tfile, "targets", "list", "--json").stdout)}
    assert listed["ready"]["reachable"] and listed["ready"]["migrated"] and listed["ready"]["revision"]
    assert listed["fresh"]["reachable"] and not listed["fresh"]["migrated"] and listed["fresh"]["revision"] is None

    # a job command on an unmigrated target: exit 5, naming the target and how to fix it
    out = cli(tfile, "status", "--target", "fresh", check=False)
    assert out.returncode == 5
    assert "target fresh" in out.stderr and "db upgrade --target fresh" in out.stderr

    up = cli(tfile, "db", "upgrade", "--all-targets")
    assert "target fresh" in up.stdout and "target ready" in up.stdout
    listed = {r["name"]: r for r in json.loads(cli(tfile, "targets", "list", "--json").stdout)}
    assert all(r["migrated"] for r in listed.values())
    assert cli(tfile, "status", "--target", "fresh").stdout.strip() == "no jobs"

    cli(tfile, "targets", "remove", "fresh")
    assert [r["name"] for r in json.loads(cli(tfile, "targets", "list", "--json").stdout)] == ["ready"]
    assert cli(tfile, "targets", "remove", "fresh", check=False).returncode == 2


def test_job_commands_act_on_the_target_named(engine, db_url, empty_db, tfile, tmp_path):
    """--target on enqueue, status, pause: the job lands in that target's database only."""
    make_items(engine, 50)
    cli(tfile, "targets", "add", "one", db_url)
    cli(tfile, "targets", "add", "two", empty_db)
    cli(tfile, "db", "upgrade", "--target", "two")
    handler = tmp_path / "h.sql"
    handler.write_text(LOG_HANDLER)
    job = cli(tfile, "enqueue", "backfill-range", "--target", "one", "--source", "items", "--key", "k",
              "--from", "1", "--to", "100", "--handler", f"sql:{handler}", "--owner", "tests").stdout.strip()
    assert scalar(engine, "SELECT count(*) FROM queue_jobs WHERE id = :j", j=job) == 1
    assert cli(tfile, "status", "--target", "two").stdout.strip() == "no jobs"
    assert job in cli(tfile, "status", "--target", "one", "--json").stdout
    assert cli(tfile, "pause", job, "--target", "two", check=False).returncode == 3  # not in that database
    # $TIDEGATE_TARGET is the default target
    assert job in cli({**tfile, "TIDEGATE_TARGET": "one"}, "status", "--json").stdout
    # both --target and --database-url given: refused
    both = run_cli(db_url, "status", "--target", "one", "--database-url", db_url, env=tfile, check=False)
    assert both.returncode == 2 and "not both" in both.stderr


def test_targets_from_the_environment(db_url, tfile):
    env = {**tfile, "TIDEGATE_TARGETS": f"x={with_password(db_url)}, y={db_url};z={db_url}"}
    rows = json.loads(cli(env, "targets", "list", "--json").stdout)
    assert [r["name"] for r in rows] == ["x", "y", "z"]
    assert all(r["migrated"] and r["source"] == "$TIDEGATE_TARGETS" for r in rows)
    out = cli(env, "targets", "list")
    assert SECRET not in out.stdout + out.stderr and "***" in out.stdout
    assert cli(env, "status", "--target", "z").returncode == 0
    gone = cli(env, "targets", "remove", "x", check=False)
    assert gone.returncode == 2 and "TIDEGATE_TARGETS" in gone.stderr


@pytest.mark.parametrize("name", ["A", "a b", "../etc", "a;drop table x", "x" * 64, "", "é", "-" * 0, "a\nb"])
def test_hostile_names_are_refused(db_url, tfile, tmp_path, name):
    out = cli(tfile, "targets", "add", name, db_url, check=False)
    assert out.returncode == 2 and "is not a name" in out.stderr
    assert not (tmp_path / "t" / "targets.toml").exists()
    assert cli(tfile, "status", "--target", name, check=False).returncode == 2


def test_bad_input_unknown_names_bad_urls_secrets(db_url, tfile, tmp_path):
    cli(tfile, "targets", "add", "known_1", db_url)
    out = cli(tfile, "status", "--target", "nope", check=False)
    assert out.returncode == 2 and "no target nope" in out.stderr and "known_1" in out.stderr
    for url in (f"postgresql://u:{SECRET}@h@x/db", f"mysql://u:{SECRET}@h/db", "not a url", f"postgresql://u:{SECRET}@h:99999/d"):
        bad = cli(tfile, "targets", "add", "bad", url, check=False)
        assert bad.returncode == 2, bad.stderr
        assert SECRET not in bad.stdout + bad.stderr
    assert cli(tfile, "targets", "add", "known_1", db_url, check=False).returncode == 2  # no silent overwrite
    cli(tfile, "targets", "add", "known_1", with_password(db_url), "--replace")
    # the environment's malformed URL: exit 2, masked, for every command that reads targets
    env = {**tfile, "TIDEGATE_TARGETS": f"e=postgresql://u:{SECRET}@h@x/db"}
    out = cli(env, "targets", "list", check=False)
    assert out.returncode == 2 and SECRET not in out.stderr
    # a hand-edited file that is not TOML, or holds a hostile name
    path = tmp_path / "t" / "targets.toml"
    path.write_text('[targets]\n"Bad Name" = "postgresql://h/d"\n')
    assert cli(tfile, "targets", "list", check=False).returncode == 2
    path.write_text("[targets\n")
    assert cli(tfile, "targets", "list", check=False).returncode == 2


def test_unreachable_target_is_listed_and_upgrade_all_reports_it(db_url, tfile):
    cli(tfile, "targets", "add", "up", db_url)
    cli(tfile, "targets", "add", "down", f"postgresql://u:{SECRET}@127.0.0.1:1/x")
    rows = {r["name"]: r for r in json.loads(cli(tfile, "targets", "list", "--json").stdout)}
    assert rows["up"]["reachable"] and not rows["down"]["reachable"]
    out = cli(tfile, "db", "upgrade", "--all-targets", check=False)
    assert out.returncode == 5 and "target down" in out.stderr and "target up" in out.stdout
    assert SECRET not in out.stdout + out.stderr
    assert cli(tfile, "status", "--target", "down", check=False).returncode == 5


def test_environment_entries_keep_multi_host_urls_whole():
    from tidegate.worker import targets

    found = targets.parse_env("a=postgresql://u:p@h1:5432,h2:5433/db?target_session_attrs=read-write,"
                              " b=postgres://h/x;c=postgresql+psycopg://h/y\nd=postgresql://h/z")
    assert found == {"a": "postgresql://u:p@h1:5432,h2:5433/db?target_session_attrs=read-write",
                     "b": "postgresql://h/x", "c": "postgresql://h/y", "d": "postgresql://h/z"}
    for bad in ("a=postgresql://h/x,a=postgresql://h/y", "a=", "=postgresql://h/x", "postgresql://h/x"):
        with pytest.raises(targets.InvalidInput):
            targets.parse_env(bad)
