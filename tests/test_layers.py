"""The layering is a contract, checked on every test run: worker/ knows no job kind,
jobs/ knows no processes, and no runtime module builds SQL with f-strings."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_import_contracts_hold():
    linter = str(Path(sys.executable).parent / "lint-imports")
    proc = subprocess.run([str(ROOT / ".ci/lint-imports")], env={**os.environ, "LINT_IMPORTS": linter},
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 kept, 0 broken" in proc.stdout


def test_no_fstring_sql_in_the_runtime():
    pattern = re.compile(r"""f["'](\s*)(SELECT|INSERT|UPDATE|DELETE|WITH)\b""", re.I)
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "worker").rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []
