"""The demo of the backfill runbook: hero_snapshots (raw JSONB) -> user_troops."""
