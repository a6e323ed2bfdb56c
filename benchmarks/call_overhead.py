"""Per-call overhead of ``@baldur.protected`` against a bare call and against peers.

What is measured: a function that returns a constant, called through

* nothing (the bare baseline),
* ``@baldur.protected`` with default options (memory store, closed breaker),
* ``pybreaker.CircuitBreaker()`` (default options, ``breaker.call`` via its decorator),
* ``circuitbreaker``'s ``@circuit`` (default options),
* purgatory's ``SyncCircuitBreakerFactory``/``AsyncCircuitBreakerFactory`` (in memory, default options),
* ``aiobreaker.CircuitBreaker()`` (default options),

both as a sync function and as an ``async def`` awaited inside one running
asyncio loop (pybreaker's ``call_async`` needs tornado, so it has no async
row). Timings are made inside the loop (a coroutine that awaits the function
N times), so the cost of starting a loop is not part of any number.
purgatory and aiobreaker are optional (the ``bench`` extra): a peer that is
not installed is left out, and the table says so.

Method, for noisy shared machines: each round times every variant once, one
after the other (the order rotates from round to round), so slow drift of the
machine hits all variants alike; each timing runs enough calls to last about
``--target`` seconds with the garbage collector off (as ``timeit`` does). The
table reports the median per-call time over the rounds, the overhead as
median(variant) − median(bare), and the spread (max − min over rounds) as a
hint of the noise.

    .venv/bin/python benchmarks/call_overhead.py              # 9 rounds, ~0.2 s per timing
    .venv/bin/python benchmarks/call_overhead.py --quick      # a fast smoke run
    .venv/bin/python benchmarks/call_overhead.py --write      # also update benchmarks/RESULTS.md

Benchmarks are not pass/fail tests: the goals below are printed as met or
missed, and the exit status is 0 either way.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import os
import platform
import re
import statistics
import sys
import time
import timeit
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The memory store is what is measured: never pick up a Redis URL from the environment.
os.environ.pop("BALDUR_REDIS_URL", None)

import circuitbreaker  # type: ignore[import-untyped]
import pybreaker
from bench_common import cpu_model, version

import baldur

purgatory: Any
aiobreaker: Any
try:
    import purgatory
except ImportError:  # optional peer (the bench extra)
    purgatory = None
try:
    import aiobreaker  # type: ignore[import-untyped,no-redef]
except ImportError:  # optional peer (the bench extra)
    aiobreaker = None

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADING = "## Call overhead"

#: Goals: our sync overhead ≤ 1/3 of pybreaker's; our async overhead ≤ 1.5 × our sync overhead.
GOAL_VS_PYBREAKER = 1 / 3
GOAL_ASYNC_VS_SYNC = 1.5


# -- the variants -------------------------------------------------------------

def bare_sync() -> int:
    return 1


@baldur.protected("bench-sync")
def baldur_sync() -> int:
    return 1


@pybreaker.CircuitBreaker()
def pybreaker_sync() -> int:
    return 1


@circuitbreaker.circuit  # type: ignore[untyped-decorator]
def circuitbreaker_sync() -> int:
    return 1


async def bare_async() -> int:
    return 1


@baldur.protected("bench-async")
async def baldur_async() -> int:
    return 1


@circuitbreaker.circuit  # type: ignore[untyped-decorator]
async def circuitbreaker_async() -> int:
    return 1


#: Peers that are not installed, for the report.
MISSING = [name for name, module in (("purgatory", purgatory), ("aiobreaker", aiobreaker)) if module is None]


def _peers() -> list[Variant]:
    """purgatory and aiobreaker, where installed: each as sync and async."""
    found: list[Variant] = []
    if purgatory is not None:
        sync_factory = purgatory.SyncCircuitBreakerFactory()
        async_factory = purgatory.AsyncCircuitBreakerFactory()

        @sync_factory("bench-purgatory-sync")  # type: ignore[untyped-decorator]
        def purgatory_sync() -> int:
            return 1

        @async_factory("bench-purgatory-async")  # type: ignore[untyped-decorator]
        async def purgatory_async() -> int:
            return 1

        found += [Variant("purgatory", "sync", purgatory_sync), Variant("purgatory", "async", purgatory_async)]
    if aiobreaker is not None:
        breaker = aiobreaker.CircuitBreaker()

        @breaker  # type: ignore[untyped-decorator]
        def aiobreaker_sync() -> int:
            return 1

        @breaker  # type: ignore[untyped-decorator]
        async def aiobreaker_async() -> int:
            return 1

        found += [Variant("aiobreaker", "sync", aiobreaker_sync), Variant("aiobreaker", "async", aiobreaker_async)]
    return found


@dataclass
class Variant:
    label: str
    kind: str  # "sync" or "async"
    func: Callable[[], Any]
    number: int = 0
    times: list[float] = field(default_factory=list)  # seconds per call, one per round

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def spread(self) -> float:
        return max(self.times) - min(self.times)


def variants() -> list[Variant]:
    peers = _peers()
    return [
        Variant("bare", "sync", bare_sync),
        Variant("baldur", "sync", baldur_sync),
        Variant("pybreaker", "sync", pybreaker_sync),
        Variant("circuitbreaker", "sync", circuitbreaker_sync),
        *[v for v in peers if v.kind == "sync"],
        Variant("bare", "async", bare_async),
        Variant("baldur", "async", baldur_async),
        Variant("circuitbreaker", "async", circuitbreaker_async),
        *[v for v in peers if v.kind == "async"],
    ]


# -- timing --------------------------------------------------------------------

async def _await_loop(func: Callable[[], Awaitable[Any]], number: int) -> float:
    """Seconds for ``number`` sequential awaits of ``func()``, measured inside the running loop."""
    started = time.perf_counter()
    for _ in range(number):
        await func()
    return time.perf_counter() - started


def _time(variant: Variant, number: int, loop: asyncio.AbstractEventLoop) -> float:
    """Seconds for ``number`` calls of the variant (garbage collector off, as ``timeit`` does)."""
    if variant.kind == "sync":
        return timeit.Timer(variant.func).timeit(number)
    enabled = gc.isenabled()
    gc.disable()
    try:
        return loop.run_until_complete(_await_loop(variant.func, number))
    finally:
        if enabled:
            gc.enable()


def _calibrate(variant: Variant, target: float, loop: asyncio.AbstractEventLoop) -> int:
    """A number of calls whose timing lasts about ``target`` seconds."""
    number = 1000
    while True:
        elapsed = _time(variant, number, loop)
        if elapsed >= target / 5:
            return max(1000, int(number * target / elapsed))
        number *= 4


def _check(variant: Variant, loop: asyncio.AbstractEventLoop) -> None:
    """Every variant must work before it is timed."""
    result = variant.func() if variant.kind == "sync" else loop.run_until_complete(variant.func())
    if result != 1:
        raise SystemExit(f"{variant.kind} {variant.label} returned {result!r}, expected 1")


def run(rounds: int, target: float, log: Callable[[str], None]) -> list[Variant]:
    baldur.init()
    runtime = baldur.init()
    if runtime.shared:
        raise SystemExit("baldur is not on the memory store; unset BALDUR_REDIS_URL")
    loop = asyncio.new_event_loop()
    try:
        todo = variants()
        for variant in todo:
            _check(variant, loop)
            variant.number = _calibrate(variant, target, loop)
        for r in range(rounds):
            shift = r % len(todo)
            for variant in todo[shift:] + todo[:shift]:
                variant.times.append(_time(variant, variant.number, loop) / variant.number)
            log(f"round {r + 1}/{rounds} done")
        if baldur.breaker("bench-sync").state != "closed" or baldur.breaker("bench-async").state != "closed":
            raise SystemExit("a baldur breaker left the closed state during the run")
    finally:
        loop.close()
    return todo


# -- report --------------------------------------------------------------------

def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.3f}"


def figures(done: list[Variant]) -> dict[str, float]:
    """Overheads (seconds) by ``kind/label``, and the two goal ratios."""
    bare = {v.kind: v.median for v in done if v.label == "bare"}
    overhead = {f"{v.kind}/{v.label}": v.median - bare[v.kind] for v in done}
    theirs, ours_sync = overhead["sync/pybreaker"], overhead["sync/baldur"]
    overhead["vs_pybreaker"] = ours_sync / theirs if theirs > 0 else float("nan")
    overhead["async_vs_sync"] = overhead["async/baldur"] / ours_sync if ours_sync > 0 else float("nan")
    return overhead


def report(done: list[Variant], rounds: int, target: float, *, command: str = "python benchmarks/call_overhead.py "
           "--write", machine: bool = True) -> str:
    bare = {v.kind: v.median for v in done if v.label == "bare"}
    overhead = {(v.kind, v.label): v.median - bare[v.kind] for v in done}
    lines = [
        "| kind | variant | median per call (µs) | overhead vs bare (µs) | × bare | spread over rounds (µs) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for v in done:
        over = "–" if v.label == "bare" else _us(overhead[v.kind, v.label])
        lines.append(f"| {v.kind} | {v.label} | {_us(v.median)} | {over} | {v.median / bare[v.kind]:.2f} "
                     f"| {_us(v.spread)} |")
    ours_sync = overhead["sync", "baldur"]
    ours_async = overhead["async", "baldur"]
    theirs = overhead["sync", "pybreaker"]
    vs_pybreaker = ours_sync / theirs if theirs > 0 else float("nan")
    async_vs_sync = ours_async / ours_sync if ours_sync > 0 else float("nan")
    lines += [
        "",
        "| ratio | measured | goal | |",
        "| --- | ---: | ---: | --- |",
        f"| baldur sync overhead ÷ pybreaker sync overhead | {vs_pybreaker:.2f} | ≤ {GOAL_VS_PYBREAKER:.2f} "
        f"| {'met' if vs_pybreaker <= GOAL_VS_PYBREAKER else 'missed'} |",
        f"| baldur async overhead ÷ baldur sync overhead | {async_vs_sync:.2f} | ≤ {GOAL_ASYNC_VS_SYNC:.2f} "
        f"| {'met' if async_vs_sync <= GOAL_ASYNC_VS_SYNC else 'missed'} |",
        "",
    ]
    if machine:
        lines += [
            f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
            f"- CPU: {cpu_model()}, {os.cpu_count()} cores; {platform.system()} {platform.machine()}",
            f"- Python {platform.python_version()} ({platform.python_implementation()})",
            f"- baldur-framework {version('baldur-framework')} (baldur {baldur.__version__}), "
            f"pybreaker {version('pybreaker')}, circuitbreaker {version('circuitbreaker')}, "
            f"purgatory {version('purgatory')}, aiobreaker {version('aiobreaker')}, anyio {version('anyio')}",
        ]
    lines += [
        f"- method: {rounds} rounds, every variant once per round in rotating order, "
        f"each timing ≈ {target} s of back-to-back calls with gc off; async variants awaited in a loop "
        f"inside one running asyncio loop; medians over rounds; command `{command}`",
        "- variants: a function returning a constant; baldur `@protected(name)` with default options "
        "(memory store, closed breaker); pybreaker `CircuitBreaker()` as decorator; circuitbreaker `@circuit`; "
        "purgatory `SyncCircuitBreakerFactory()`/`AsyncCircuitBreakerFactory()` (in memory) as decorator; "
        "aiobreaker `CircuitBreaker()` as decorator; pybreaker's `call_async` needs tornado, so it has no "
        "async row",
    ]
    if MISSING:
        lines.append(f"- not installed, so not measured: {', '.join(MISSING)} "
                     "(`pip install -e '.[bench]'` brings them)")
    return "\n".join(lines)


def write(section: str) -> None:
    """Put ``section`` under the "Call overhead" heading of RESULTS.md, replacing an earlier one."""
    block = f"{HEADING}\n\n{section}\n"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(HEADING)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block + "\n", text, count=1).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + block
    RESULTS.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=9, help="rounds of all variants (default 9, at least 7 "
                        "for a result worth writing)")
    parser.add_argument("--target", type=float, default=0.2, help="seconds per timing (default 0.2)")
    parser.add_argument("--quick", action="store_true", help="3 rounds of 0.03 s timings: a smoke run")
    parser.add_argument("--write", action="store_true", help=f"write the table to {RESULTS.name}")
    args = parser.parse_args(argv)
    rounds, target = (3, 0.03) if args.quick else (args.rounds, args.target)
    if rounds < 1 or target <= 0:
        parser.error("--rounds must be ≥ 1 and --target > 0")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log(f"{rounds} rounds, ≈ {target} s per timing, {len(variants())} variants")
    section = report(run(rounds, target, log), rounds, target)
    print(section)
    if args.write:
        if args.quick:
            log("--quick results are not written; run without --quick")
        else:
            write(section)
            log(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
