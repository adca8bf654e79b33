"""live workers: the lease rule written once, as the view tidegate_live_workers

Revision ID: 0011
Revises: 0010
Create Date: 2027-01-19

A worker is live while its heartbeat is younger than its lease. Claiming a slice, the concurrency
count at each batch, --drain's "work left", `status`, /metrics and the runbook's SQL all ask that
question; they now read ``tidegate_live_workers`` instead of repeating the condition. A plain view
(no DISTINCT, aggregate or LIMIT) is inlined into each query by the planner, so every plan stays
the one the repeated condition had: an index probe of tidegate_workers_pkey, filtered.

Whoever may read tidegate_workers may read the view: the roles ops/roles.sql created before this
revision get SELECT on it here (their workers claim through it at once); a fresh install's
ops/roles.sql grants it with the table.
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
CREATE VIEW tidegate_live_workers AS
SELECT id, pool, hostname, pid, started_at, heartbeat_at, lease_seconds, stopping
FROM tidegate_workers
WHERE heartbeat_at > now() - make_interval(secs => lease_seconds);
COMMENT ON VIEW tidegate_live_workers IS
    'Workers whose lease is alive: heartbeat younger than lease_seconds (migration 0011)';
DO $$
DECLARE grantee oid;
BEGIN
    FOR grantee IN SELECT DISTINCT a.grantee FROM pg_class c, aclexplode(c.relacl) a
                   WHERE c.oid = 'tidegate_workers'::regclass AND a.privilege_type = 'SELECT'
                     AND a.grantee <> c.relowner
    LOOP
        EXECUTE format('GRANT SELECT ON tidegate_live_workers TO %s',
                       CASE WHEN grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(grantee)) END);
    END LOOP;
END $$;
""")


def downgrade() -> None:
    op.execute("DROP VIEW tidegate_live_workers")
