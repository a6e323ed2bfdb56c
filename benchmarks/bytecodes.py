"""What one in-process request executes, counted in bytecode instructions: the same count on
every run and every machine, where a timing moves with the machine's load.

    .venv/bin/python benchmarks/bytecodes.py                      # the quickstart against bare Flask
    .venv/bin/python benchmarks/bytecodes.py quickstart-limit     # any of VARIANTS
    .venv/bin/python benchmarks/bytecodes.py django               # Django's against bare Django

Each variant, and bare Flask, runs in a process of its own (Baldur's runtime is one per
process), serves 200 requests to warm up (routes looked up, the breaker's fast lane taken),
then one more ``GET /demo`` (``bench_inprocess.requester``) traced with ``sys.settrace``'s
opcode events. Printed: each variant's instructions and Python calls per request, and how
many more than bare Flask; then, per function, the instructions the variant adds. A timing
says how much a change saved on this machine today; this count says where the
instructions went, so that two commits compare without rounds or medians. (Branches that
read the clock may differ from run to run; and the traced request is slow under the tracer,
so the adaptive limit's latency sample takes its slow-request branch.)
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path
from types import FrameType
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import PYTHON, child_env, table
from bench_inprocess import LIMIT

#: What each variant sets in its process's environment (``bench_apps.BUILDERS`` reads ``BENCH_APP``,
#: ``bench_django`` ``BENCH_DJANGO``).
VARIANTS: dict[str, dict[str, str]] = {
    "bare": {"BENCH_APP": "bare"},
    "quickstart": {"BENCH_APP": "quickstart"},
    "quickstart-limit": {"BENCH_APP": "quickstart", "BALDUR_RATE_LIMIT": LIMIT},
    "view-limit": {"BENCH_APP": "view_limit"},
    "pybreaker": {"BENCH_APP": "pybreaker"},
    "hooks": {"BENCH_APP": "hooks"},
    "django-bare": {"BENCH_DJANGO": "bare"},
    "django": {"BENCH_DJANGO": "baldur"},
    "django-limit": {"BENCH_DJANGO": "baldur", "BALDUR_RATE_LIMIT": LIMIT},
}
#: The baselines: a Django variant is compared with bare Django, the others with bare Flask.
BASELINES = ("bare", "django-bare")


def baseline(variant: str) -> str:
    return "django-bare" if variant.startswith("django") else "bare"
WARMUP_REQUESTS = 200
#: Functions listed per variant, the largest additions first.
TOP = 30


def _count() -> dict[str, list[int]]:
    """In this process: one traced request; per function (file:name), [instructions, calls]."""
    from bench_inprocess import requester

    if "BENCH_DJANGO" in os.environ:
        import bench_django

        wsgi = bench_django.application
    else:
        import bench_apps

        wsgi = bench_apps.app.wsgi_app
    statuses: dict[str, int] = {}
    one = requester(wsgi, statuses)
    for _ in range(WARMUP_REQUESTS):
        one()
    counts: collections.defaultdict[str, list[int]] = collections.defaultdict(lambda: [0, 0])

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        # (set on every event, not only at "call": Python 3.12+ may not honour it set there alone)
        frame.f_trace_opcodes = True
        code = frame.f_code
        entry = counts[f"{Path(code.co_filename).name}:{code.co_qualname}"]
        if event == "opcode":
            entry[0] += 1
        elif event == "call":
            entry[1] += 1
        return trace

    statuses.clear()
    sys.settrace(trace)
    try:
        one()
    finally:
        sys.settrace(None)
    if statuses != {"200": 1}:
        raise SystemExit(f"the traced request was answered {statuses}")
    return dict(counts)


def measure(variant: str) -> dict[str, list[int]]:
    """The counts of ``variant``, traced in a process of its own."""
    done = subprocess.run([PYTHON, str(Path(__file__).resolve()), "--child"], env=child_env(**VARIANTS[variant]),
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"{variant}: the traced process failed:\n{done.stderr[-2000:]}")
    counts: dict[str, list[int]] = json.loads(done.stdout.splitlines()[-1])
    return counts


def report(chosen: list[str]) -> str:
    measured = {variant: measure(variant) for variant in dict.fromkeys([*map(baseline, chosen), *chosen])}
    totals = {variant: (sum(i for i, _ in counts.values()), sum(c for _, c in counts.values()))
              for variant, counts in measured.items()}
    rows = []
    for variant, (total, calls) in totals.items():
        base = totals[baseline(variant)][0]
        rows.append([variant, str(total), str(calls), "–" if variant in BASELINES else f"+{total - base}",
                     f"{total / base:.3f}"])
    parts = [table(["variant", "instructions per request", "Python calls", "added", "× its bare baseline"], rows,
                   ["l", "r", "r", "r", "r"])]
    for variant in chosen:
        counts, bare = measured[variant], measured[baseline(variant)]
        added = sorted(((counts.get(name, [0, 0])[0] - bare.get(name, [0, 0])[0], name)
                        for name in set(counts) | set(bare)), reverse=True)
        lines = [[name, f"{delta:+d}", str(counts.get(name, [0, 0])[1])] for delta, name in added[:TOP] if delta]
        parts.append(f"\n{variant}: the functions whose instructions differ from {baseline(variant)}'s\n\n"
                     + table(["function", "instructions added", "calls"], lines, ["l", "r", "r"]))
    return "\n".join(parts)


def main(argv: list[str]) -> int:
    if argv == ["--child"]:
        print(json.dumps(_count()))
        return 0
    chosen = argv or ["quickstart"]
    unknown = [name for name in chosen if name not in VARIANTS or name in BASELINES]
    if unknown:
        print(f"unknown variant {', '.join(unknown)}: choose from "
              f"{', '.join(v for v in VARIANTS if v not in BASELINES)}", file=sys.stderr)
        return 2
    print(report(chosen))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
