"""tidegate installs one namespace and a public API: `from tidegate import ...`.

The wheel test builds the real wheel, installs it into a fresh virtualenv and runs the CLI and a
user's handler from a directory that has its own `jobs` and `worker` packages (which explode when
imported): an application with those common package names installs tidegate beside them.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import psycopg
import pytest

import tidegate
from tests.conftest import ROOT, parse_python

APP_HANDLER = '''
from sqlalchemy import text

from tidegate import ItemHandler, register


class Doubled(ItemHandler):
    """The application's own handler, written against the public API only."""

    name = "doubled"

    def transform(self, row):
        return [{"k": row["k"], "v": row["k"] * 2}]

    def write(self, conn, records):
        conn.execute(text("INSERT INTO doubled (k, v) VALUES (:k, :v)"), records)


register(Doubled())
'''
EXPLODES = 'raise ImportError("the application\'s own {name} package was imported by tidegate")\n'


def test_public_api_is_listed_once_and_every_name_imports():
    literal = ast.literal_eval(next(
        node.value for node in parse_python((ROOT / "tidegate/__init__.py").read_text()).body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "__all__"))
    assert sorted(literal) == sorted(["__version__", *tidegate._EXPORTS])
    for name in tidegate.__all__:
        assert getattr(tidegate, name) is not None, name
    assert sorted(dir(tidegate)) == sorted(tidegate.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tidegate.nope  # noqa: B018


def test_importing_tidegate_loads_nothing_heavy():
    code = "import sys, tidegate; print(sorted(m for m in sys.modules if m.startswith(('sqlalchemy', 'tidegate.'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.slow
def test_wheel_installs_one_namespace_beside_an_apps_own_jobs_and_worker(tmp_path: Path, empty_db: str):
    dist, source = tmp_path / "dist", tmp_path / "source"  # setuptools builds in the source tree: a copy's
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(source)],
                   check=True, capture_output=True, text=True)
    (wheel,) = dist.glob("tidegate-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"tidegate", wheel.name.split("-py")[0] + ".dist-info"}
    for shipped in ("tidegate/worker/sql/queries.sql", "tidegate/migrations/env.py",
                    "tidegate/migrations/versions/0001_core.py", "tidegate/jobs/archive/layouts/marten.toml"):
        assert shipped in names
    sql_files = {"tidegate/" + str(p.relative_to(ROOT)) for top in ("worker", "jobs") for p in (ROOT / top).rglob("*.sql")}
    assert sql_files - set(names) == set()  # every job kind's .sql file ships beside its module

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin/pip"), "install", "-q", str(wheel)], capture_output=True, text=True)
    if pip.returncode != 0 and "No matching distribution" in pip.stderr + pip.stdout:
        pytest.skip(f"the wheel's dependencies cannot be installed here: {pip.stderr.strip()[-300:]}")
    assert pip.returncode == 0, pip.stderr

    app = tmp_path / "app"
    for package in ("jobs", "worker"):
        (app / package).mkdir(parents=True)
        (app / package / "__init__.py").write_text(EXPLODES.format(name=package))
    (app / "app_handlers.py").write_text(APP_HANDLER)
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (k bigint PRIMARY KEY)")
        conn.execute("INSERT INTO items SELECT generate_series(1, 500)")
        conn.execute("CREATE TABLE doubled (k bigint PRIMARY KEY, v bigint NOT NULL)")

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(DATABASE_URL=empty_db, PYTHONPATH=str(app), TIDEGATE_HANDLERS="app_handlers")

    def tidegate_cli(*args: str) -> str:
        proc = subprocess.run([str(venv / "bin/tidegate"), *args], cwd=app, env=env, capture_output=True, text=True,
                              timeout=180)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    tidegate_cli("db", "upgrade")
    tidegate_cli("enqueue", "backfill-range", "--source", "items", "--key", "k", "--from", "1", "--to", "501",
                 "--handler", "doubled", "--batch-size", "100", "--owner", "app")
    tidegate_cli("worker", "--concurrency", "1", "--drain")
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("SELECT count(*), sum(v)::bigint FROM doubled").fetchone() == (500, 500 * 501)
        assert conn.execute("SELECT status, processed_count FROM backfill_jobs").fetchone() == ("done", 500)
    where = subprocess.run([str(venv / "bin/python"), "-c", "import tidegate.worker, jobs"], cwd=app, env=env,
                           capture_output=True, text=True)
    assert "the application's own jobs package was imported" in where.stderr  # the app's jobs is its own
    assert str(venv) in subprocess.run([str(venv / "bin/python"), "-c", "import tidegate.worker as w; print(w.__file__)"],
                                       cwd=app, env=env, capture_output=True, text=True).stdout

