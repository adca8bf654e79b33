"""A module that must never be imported because a payload names it (tests/test_trust_code.py).

Importing it writes the file named by ``$TIDEGATE_TEST_SENTINEL``: its absence after an attack is the proof
that nothing imported it. It is importable (on PYTHONPATH) but in no handler registry."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

_where = os.environ.get("TIDEGATE_TEST_SENTINEL")
if _where:
    Path(_where).write_text(f"imported by pid {os.getpid()}\n")


def handler(conn: Any, row: Any) -> None:
    Path(_where or os.devnull).write_text(f"called with {row!r}\n")
