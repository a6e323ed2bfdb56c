"""benchmarks/bytecodes.py: the per-request instruction count that docs/performance.md quotes;
and how the benchmarks' ratios pair rounds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_common import median, paired_ratio  # noqa: E402  (benchmarks/ is not a package)


def test_bytecodes_counts_what_the_quickstart_adds_to_a_bare_request() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bytecodes.py"), "quickstart", "hooks"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    rows = {match[0]: (int(match[1]), int(match[2]))
            for match in re.findall(r"^\| (bare|quickstart|hooks) \| (\d+) \| (\d+) \|", done.stdout, re.M)}
    assert set(rows) == {"bare", "quickstart", "hooks"}, done.stdout
    (bare, bare_calls), (quickstart, quickstart_calls) = rows["bare"], rows["quickstart"]
    # bare Flask's own request is thousands of instructions; the quickstart adds Baldur's steps to it
    assert bare > 1000 and quickstart > bare and quickstart_calls > bare_calls
    # Baldur's hook points passing straight through cost a few frames: less than Baldur's work in them
    hooks, hooks_calls = rows["hooks"]
    assert bare < hooks < quickstart and bare_calls < hooks_calls < quickstart_calls
    hooks_section = done.stdout.split("hooks: the functions")[1]
    added = re.findall(r"^\| (\S+) \| \+\d+ \| \d+ \|$", hooks_section, re.M)
    assert added and all(function.startswith("bench_apps.py:") for function in added), hooks_section
    # ...and the added instructions are attributed to Baldur's functions, one call each
    for function in ("flask.py:_Middleware.__call__", "_web.py:WebRequest.settle", "_web.py:WebCall.admit_front",
                     "_faces.py:sync_face.<locals>.wrapper"):
        assert re.search(rf"^\| {re.escape(function)} \| \+\d+ \| 1 \|$", done.stdout, re.M), function


def test_bytecodes_refuses_an_unknown_variant() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bytecodes.py"), "nonesuch"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2
    assert "unknown variant nonesuch" in done.stderr and "quickstart" in done.stderr


def test_a_paired_ratio_is_not_moved_by_a_disturbed_round_when_the_load_moves_between_rounds() -> None:
    """A variant 3 % slower than bare, except in two rounds disturbed during its own turn, over rounds
    whose load moved by 20 %: the median of each round's ratio says 0.97; the ratio of the two medians
    divides a disturbed round of the variant by an undisturbed one of bare's, and says 0.92."""
    bare = [6000.0, 6600.0, 7200.0, 6300.0, 6900.0]
    per_round = [0.97, 0.90, 0.97, 0.97, 0.88]
    variant = [rps * share for rps, share in zip(bare, per_round, strict=True)]
    assert abs(paired_ratio(variant, bare) - 0.97) < 1e-9
    assert median(variant) / median(bare) < 0.93


def test_a_paired_ratio_refuses_rounds_that_do_not_pair() -> None:
    with pytest.raises(ValueError, match="pair them by round"):
        paired_ratio([1.0, 2.0], [1.0, 2.0, 3.0])
