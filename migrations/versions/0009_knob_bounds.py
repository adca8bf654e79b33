"""knob bounds: every pace knob of backfill_jobs held to its range by a CHECK constraint

Revision ID: 0009
Revises: 0008
Create Date: 2027-01-12

The ranges are those of the knob table (worker/knobs.py), the same `tidegate set`, `tidegate enqueue`
and the payload validation use, so a runbook's ``UPDATE backfill_jobs SET max_rows_per_second = 1e-300`` is refused
like the CLI refuses it. NaN and infinities fall outside every range.

Existing rows are made valid first: a value outside its range (only an UPDATE could have put it
there) is pulled to the nearest bound, and a NaN in a knob that may be NULL becomes NULL (no limit).
Each job changed gets a ``tidegate_audit`` row (action ``clamp-knobs``) with its old values.
The constraints are named ``backfill_jobs_<knob>_range``. Their bounds are written here as they were
when this migration was made (a migration must not change with later code); tests/test_knobs.py reads
them from the catalog and compares them with the knob table.
"""

from typing import NamedTuple

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


class Bound(NamedTuple):
    name: str
    lo: float
    hi: float
    integer: bool = True
    clearable: bool = False  # NULL means "no such limit"
    table: str = "backfill_jobs"


CHECKED = [
    Bound("batch_size", 1, 100_000),
    Bound("concurrency", 1, 64),
    Bound("max_rows_per_second", 0.001, 1e9, integer=False, clearable=True),
    Bound("sleep_between_batches", 0, 3600, integer=False),
    Bound("target_batch_seconds", 0.01, 3600, integer=False, clearable=True),
    Bound("min_batch_size", 1, 100_000),
    Bound("max_batch_size", 1, 100_000),
    Bound("row_limit", 1, 10**15, clearable=True),
    Bound("error_rate_threshold", 0, 1, integer=False),
]


def _range(b: Bound) -> str:
    return f"{b.name} BETWEEN {b.lo!r} AND {b.hi!r}"


def _clamped(b: Bound) -> str:
    inside = f"LEAST(GREATEST(b.{b.name}, {b.lo!r}), {b.hi!r})"  # NaN is above every number: to hi
    if b.clearable and not b.integer:
        return f"CASE WHEN b.{b.name} = 'NaN' THEN NULL ELSE {inside} END"
    return inside


def upgrade() -> None:
    # Bounds are the numeric literals above, never user input.
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
