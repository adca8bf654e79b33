"""The entry point the runtime loads: job kinds and their CLI commands.

``COMMANDS`` is imported when first asked for (the CLI asks only when a command of a job kind runs, or for
``--help``): a worker process needs the kinds, not the commands' modules (bench/RESULTS.md, pool start)."""

from __future__ import annotations

from typing import Any

from tidegate.jobs import backfill_range
from tidegate.jobs.archive import archive_range

KINDS = [backfill_range.KIND, archive_range.ARCHIVE, archive_range.UNARCHIVE]

__all__ = ["COMMANDS", "KINDS"]  # noqa: F822  (COMMANDS: module __getattr__ below)


def __getattr__(name: str) -> Any:
    if name != "COMMANDS":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from tidegate.jobs.archive.cli import COMMANDS as ARCHIVE_COMMANDS
    from tidegate.jobs.cli import COMMANDS

    globals()["COMMANDS"] = commands = [*COMMANDS, *ARCHIVE_COMMANDS]
    return commands
