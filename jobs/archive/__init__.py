"""Event-store archiving: layouts, the archive_range / unarchive_range kinds, their commands."""
