"""demo: hero_snapshots (raw JSONB source) and user_troops (derived), as in the backfill runbook

Revision ID: d0001
Revises:
Create Date: 2026-11-23

Applied by `tidegate demo seed` (alembic -n demo upgrade head); kept in its own
version table so the product's own history stays a single head.
"""

from alembic import op

revision = "d0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE hero_snapshots (
            id            bigserial PRIMARY KEY,
            user_id       bigint NOT NULL,
            namecode      text NOT NULL,
            created_at    timestamptz NOT NULL,
            size_bytes    integer NOT NULL,
            raw           jsonb NOT NULL,
            processed_at  timestamptz
        )
        """
    )
    op.execute("CREATE INDEX hero_snapshots_created_at_idx ON hero_snapshots (created_at)")
    op.execute("CREATE INDEX hero_snapshots_user_idx ON hero_snapshots (user_id)")
    op.execute(
        """
        CREATE TABLE user_troops (
            user_id      bigint NOT NULL,
            troop_id     integer NOT NULL,
            level        integer NOT NULL,
            amount       integer NOT NULL,
            ascension    integer NOT NULL DEFAULT 0,
            snapshot_id  bigint NOT NULL,
            snapshot_at  timestamptz NOT NULL,
            PRIMARY KEY (user_id, troop_id)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS user_troops")
    op.execute("DROP TABLE IF EXISTS hero_snapshots")
