"""Alembic environment: runs migrations online against the URL tidegate resolves.

The URL comes, in order, from ``config.attributes["url"]`` (set by
``tidegate db upgrade``), ``-x url=...``, ``DATABASE_URL``, else the embedded
PostgreSQL server, exactly like every other tidegate command.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from tidegate.worker.db import resolve_url, sqlalchemy_url

config = context.config
url = (
    config.attributes.get("url")
    or context.get_x_argument(as_dictionary=True).get("url")
    or resolve_url(None)
)
version_table = config.get_main_option("version_table") or "alembic_version"


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    engine = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
    with engine.connect() as conn:
        _migrate(conn)
    engine.dispose()


def _migrate(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(connection=connection, version_table=version_table, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
    if connection.in_transaction():
        connection.commit()


if context.is_offline_mode():
    context.configure(url=sqlalchemy_url(url), literal_binds=True, version_table=version_table)
    with context.begin_transaction():
        context.run_migrations()
else:
    run()
