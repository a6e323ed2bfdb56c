"""benchmarks/bytecodes.py: the per-request instruction count that docs/performance.md quotes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bytecodes_counts_what_the_quickstart_adds_to_a_bare_request() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bytecodes.py"), "quickstart"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    rows = {match[0]: (int(match[1]), int(match[2]))
            for match in re.findall(r"^\| (bare|quickstart) \| (\d+) \| (\d+) \|", done.stdout, re.M)}
    assert set(rows) == {"bare", "quickstart"}, done.stdout
    (bare, bare_calls), (quickstart, quickstart_calls) = rows["bare"], rows["quickstart"]
    # bare Flask's own request is thousands of instructions; the quickstart adds Baldur's steps to it
    assert bare > 1000 and quickstart > bare and quickstart_calls > bare_calls
    # ...and the added instructions are attributed to Baldur's functions, one call each
    for function in ("flask.py:_Middleware.__call__", "flask.py:_settle", "_web.py:WebCall.admit_front",
                     "_faces.py:sync_face.<locals>.wrapper"):
        assert re.search(rf"^\| {re.escape(function)} \| \+\d+ \| 1 \|$", done.stdout, re.M), function


def test_bytecodes_refuses_an_unknown_variant() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bytecodes.py"), "nonesuch"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2
    assert "unknown variant nonesuch" in done.stderr and "quickstart" in done.stderr
