"""archive_layouts: event-store layouts an operator registered, by name

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

A payload's ``layout`` used to be a file path the worker opened, so an enqueuer could make
the worker read (or hang on) any file of its host. Now it names a shipped layout or a row
of this table, written by ``tidegate archive layout add FILE`` after the same checks as
before (shape, then every name against the catalog). ``body`` is the file as given,
``sha256`` its digest (the CHECK keeps them together), ``spec`` the parsed document the
worker uses, so a worker needs no parser for the file's format and opens no file.
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE archive_layouts (
            name      text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$'),
            format    text NOT NULL CHECK (format IN ('toml', 'yaml')),
            body      text NOT NULL,
            sha256    text NOT NULL CHECK (sha256 = encode(sha256(convert_to(body, 'UTF8')), 'hex')),
            spec      jsonb NOT NULL CHECK (jsonb_typeof(spec) = 'object'),
            added_by  text NOT NULL DEFAULT session_user,
            added_at  timestamptz NOT NULL DEFAULT now()
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE archive_layouts")
