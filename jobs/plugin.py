"""The entry point the runtime loads: job kinds and their CLI commands."""

from __future__ import annotations

from tidegate.jobs import backfill_range
from tidegate.jobs.archive import archive_range
from tidegate.jobs.archive.cli import COMMANDS as ARCHIVE_COMMANDS
from tidegate.jobs.cli import COMMANDS

KINDS = [backfill_range.KIND, archive_range.ARCHIVE, archive_range.UNARCHIVE]

__all__ = ["COMMANDS", "KINDS"]

COMMANDS = [*COMMANDS, *ARCHIVE_COMMANDS]
