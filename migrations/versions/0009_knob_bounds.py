"""knob bounds: every pace knob of backfill_jobs held to its range by a CHECK constraint

Revision ID: 0009
Revises: 0008
Create Date: 2027-01-12

The ranges are worker/bounds.py's, the same `tidegate set`, `tidegate enqueue` and the payload
validation use, so a runbook's ``UPDATE backfill_jobs SET max_rows_per_second = 1e-300`` is refused
like the CLI refuses it. NaN and infinities fall outside every range.

Existing rows are made valid first: a value outside its range (only an UPDATE could have put it
there) is pulled to the nearest bound, and a NaN in a knob that may be NULL becomes NULL (no limit).
Each job changed gets a ``tidegate_audit`` row (action ``clamp-knobs``) with its old values.
The constraints are named ``backfill_jobs_<knob>_range``.
"""

from alembic import op

from tidegate.worker.bounds import CHECKED, Bound

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def _range(b: Bound) -> str:
    return f"{b.name} BETWEEN {b.lo!r} AND {b.hi!r}"


def _clamped(b: Bound) -> str:
    inside = f"LEAST(GREATEST(b.{b.name}, {b.lo!r}), {b.hi!r})"  # NaN is above every number: to hi
    if b.clearable and not b.integer:
        return f"CASE WHEN b.{b.name} = 'NaN' THEN NULL ELSE {inside} END"
    return inside


def upgrade() -> None:
    # Bounds are numeric literals from worker/bounds.py, never user input.
    outside = " OR ".join(f"NOT coalesce({_range(b)}, true)" for b in CHECKED)
    names = ", ".join(b.name for b in CHECKED)
    op.execute(
        f"""
        WITH old AS (
            SELECT job_id, {names} FROM backfill_jobs WHERE {outside} FOR UPDATE
        ), fixed AS (
            UPDATE backfill_jobs b SET {", ".join(f"{b.name} = {_clamped(b)}" for b in CHECKED)}
            FROM old WHERE b.job_id = old.job_id
            RETURNING b.job_id
        )
        INSERT INTO tidegate_audit (actor, action, job_id, details)
        SELECT 'migration 0009', 'clamp-knobs', old.job_id, to_jsonb(old) - 'job_id'
        FROM old JOIN fixed ON fixed.job_id = old.job_id
        """
    )
    for b in CHECKED:
        op.execute(f"ALTER TABLE {b.table} ADD CONSTRAINT {b.table}_{b.name}_range CHECK ({_range(b)})")


def downgrade() -> None:
    for b in reversed(CHECKED):
        op.execute(f"ALTER TABLE {b.table} DROP CONSTRAINT {b.table}_{b.name}_range")
