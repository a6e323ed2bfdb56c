"""Open-loop overload: requests start on schedule whatever the server does.

A small asyncio generator (no maintained tool here both holds an arrival rate
and sets a per-request header: wrk, wrk2, autocannon, k6 and vegeta are not
installed; ``hey -q`` paces per worker and so slows down with the server).
Each request is its own connection (``Connection: close``), started at
``start + i / rate`` and stamped ``X-Request-Start: t=<ms>`` at send time as
nginx would, or not stamped. Its limits: one Python process on a shared
machine, so its own scheduling adds a few milliseconds at high rates (the
achieved rate is reported) and it shares the cores with the server.

Clients: ``none`` never retry (pure open loop), ``immediate`` retry a 503 at
once (up to 3 times), ``retry-after`` retry after the ``Retry-After`` the
answer gave. Goodput counts only the 2xx answers completed while the load
lasted.

    python benchmarks/open_loop.py  # not run by the tests: several minutes of load
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_common import log, processes  # noqa: E402
from bench_servers import Server, ready, start_server  # noqa: E402

#: The app: gunicorn -w 2 --threads 8 gthread, a view of SLEEP_MS; capacity ≈ 2 × 8 / 0.1 s.
SLEEP_MS = 100
CAPACITY = 2 * 8 / (SLEEP_MS / 1000)
RETRIES = 3
TIMEOUT = 15.0


@dataclass
class Outcome:
    status: int
    latency: float
    done: float
    retry_after: float = 0.0


@dataclass
class LevelResult:
    variant: str
    stamped: bool
    clients: str
    factor: float
    offered: float
    achieved: float
    goodput_share: float
    served_p50_ms: float
    served_p99_ms: float
    shed_share: float
    shed_p50_ms: float
    answers_503: int
    errors: int
    extra: dict[str, float] = field(default_factory=dict)


async def _one(port: int, stamped: bool) -> Outcome:
    sent = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
        stamp = f"X-Request-Start: t={int(time.time() * 1000)}\r\n" if stamped else ""
        writer.write(f"GET /demo HTTP/1.1\r\nHost: bench\r\n{stamp}Connection: close\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(), TIMEOUT)
        writer.close()
    except (OSError, TimeoutError):
        return Outcome(0, time.monotonic() - sent, time.monotonic())
    done = time.monotonic()
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    status = int(head[0].split()[1]) if head and len(head[0].split()) > 1 else 0
    retry_after = 0.0
    for line in head[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "retry-after":
            retry_after = float(value.strip() or 0)
    return Outcome(status, done - sent, done, retry_after)


async def _user(port: int, stamped: bool, clients: str, outcomes: list[Outcome]) -> None:
    for attempt in range(RETRIES + 1):
        outcome = await _one(port, stamped)
        outcomes.append(outcome)
        if outcome.status != 503 or clients == "none" or attempt == RETRIES:
            return
        if clients == "retry-after":
            await asyncio.sleep(outcome.retry_after)


async def _drive(port: int, rate: float, seconds: float, stamped: bool,
                 clients: str) -> tuple[list[Outcome], float, float]:
    outcomes: list[Outcome] = []
    tasks: list[asyncio.Task[None]] = []
    start = time.monotonic() + 0.05
    total = int(rate * seconds)
    for i in range(total):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_user(port, stamped, clients, outcomes)))
    end = start + seconds
    achieved = total / max(1e-9, time.monotonic() - start)
    await asyncio.gather(*tasks)
    return outcomes, end, achieved


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(server: Server, variant: str, factor: float, seconds: float, stamped: bool, clients: str) -> LevelResult:
    rate = factor * CAPACITY
    started = time.monotonic()
    outcomes, end, achieved = asyncio.run(_drive(server.port, rate, seconds, stamped, clients))
    served = [o for o in outcomes if 200 <= o.status < 300]
    shed = [o for o in outcomes if o.status == 503]
    in_time = [o for o in served if o.done <= end]
    window = end - (started + 0.05)
    return LevelResult(
        variant=variant, stamped=stamped, clients=clients, factor=factor, offered=rate, achieved=achieved,
        goodput_share=len(in_time) / window / CAPACITY,
        served_p50_ms=_percentile([o.latency for o in served], 0.50) * 1000,
        served_p99_ms=_percentile([o.latency for o in served], 0.99) * 1000,
        shed_share=len(shed) / max(1, len(outcomes)),
        shed_p50_ms=_percentile([o.latency for o in shed], 0.50) * 1000,
        answers_503=len(shed), errors=sum(1 for o in outcomes if o.status == 0))


def _settle_server(server: Server) -> None:
    """Let the last level's backlog drain: wait until a lone request is answered at its service time."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        outcome = asyncio.run(_one(server.port, False))
        if outcome.status == 200 and outcome.latency < 2 * SLEEP_MS / 1000:
            return
        time.sleep(0.2)


#: (X-Request-Start stamped, clients) per level; bare Flask never sheds, so only its clients=none runs.
PLANS = [(True, "none"), (False, "none"), (True, "immediate"), (True, "retry-after")]


def run(rounds: int, seconds: float, factors: list[float], workdir: Path,
        progress: Callable[[str], None] = log) -> list[LevelResult]:
    """Every plan at every level for bare Flask and Baldur, variants alternating within each round."""
    slow = {"BENCH_APP": "slow", "BENCH_SLEEP_MS": str(SLEEP_MS)}
    variants = {"bare": slow, "baldur": {**slow, "BENCH_BALDUR": "1"}}
    servers = {name: start_server("gunicorn-gthread", env, workdir, f"open-{name}") for name, env in variants.items()}
    results: list[LevelResult] = []
    try:
        for server in servers.values():
            ready(server)
        for r in range(rounds):
            for name, server in servers.items():
                _settle_server(server)
                unloaded = measure(server, name, 0.25, seconds, True, "none")
                unloaded.extra["unloaded"] = 1
                results.append(unloaded)
                for stamped, clients in PLANS:
                    if name == "bare" and clients != "none":
                        continue  # bare Flask never sheds: its clients have nothing to retry
                    for factor in factors:
                        _settle_server(server)
                        progress(f"[open loop] round {r + 1}/{rounds}: {name}, {factor:g}×, "
                                 f"stamped={stamped}, clients={clients}")
                        results.append(measure(server, name, factor, seconds, stamped, clients))
    finally:
        for server in servers.values():
            processes.stop(server.proc)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factors", default="0.8,1,2,4,8")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("/tmp/open_loop.json"))
    parser.add_argument("--chart", type=Path, help="only draw the chart of a previous run's --out into this PNG")
    args = parser.parse_args()
    if args.chart is not None:
        results = [LevelResult(**x) for x in json.loads(args.out.read_text())]
        chart(results, args.chart)
        print(report(results))
        return
    workdir = Path("/tmp/open_loop_logs")
    workdir.mkdir(exist_ok=True)
    results = run(args.rounds, args.seconds, [float(f) for f in args.factors.split(",")], workdir)
    args.out.write_text(json.dumps([asdict(x) for x in results], indent=1))
    print(report(results, args.rounds, args.seconds))


#: (variant, X-Request-Start stamped, clients, factor of capacity)
Level = tuple[str, bool, str, float]


def _medians(results: list[LevelResult]) -> tuple[dict[str, float], dict[Level, dict[str, float]]]:
    """Unloaded p99 per variant, and per (variant, stamped, clients, factor) the medians over rounds."""
    unloaded: dict[str, list[float]] = {}
    runs: dict[Level, list[LevelResult]] = {}
    for x in results:
        if x.extra.get("unloaded"):
            unloaded.setdefault(x.variant, []).append(x.served_p99_ms)
        else:
            runs.setdefault((x.variant, x.stamped, x.clients, x.factor), []).append(x)
    names = ("goodput_share", "served_p50_ms", "served_p99_ms", "shed_share", "shed_p50_ms", "answers_503")
    levels = {key: {name: statistics.median(getattr(x, name) for x in group) for name in names}
              for key, group in runs.items()}
    return {v: statistics.median(p) for v, p in unloaded.items()}, levels


def figures(results: list[LevelResult]) -> dict[str, float]:
    """``<variant>/<stamped|unstamped>/<clients>/<factor>/<figure>``, p99 also as a ratio to the unloaded p99."""
    unloaded, levels = _medians(results)
    out: dict[str, float] = {f"{v}/unloaded_p99_ms": p for v, p in unloaded.items()}
    for (variant, stamped, clients, factor), level in levels.items():
        prefix = f"{variant}/{'stamped' if stamped else 'unstamped'}/{clients}/{factor:g}"
        out.update({f"{prefix}/{name}": value for name, value in level.items()})
        out[f"{prefix}/vs_unloaded"] = level["served_p99_ms"] / unloaded.get(variant, float("nan"))
    return out


def report(results: list[LevelResult], rounds: int | None = None, seconds: float | None = None) -> str:
    """Medians over rounds, per variant, header, clients and level, and how they were measured."""
    unloaded, levels = _medians(results)
    lines = ["| variant | X-Request-Start | clients | offered | goodput ÷ capacity | served p50 | served p99 "
             "| p99 ÷ unloaded p99 | shed share | shed p50 | 503s |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for (variant, stamped, clients, factor), m in levels.items():
        shed_p50 = "–" if m["shed_p50_ms"] != m["shed_p50_ms"] else f"{m['shed_p50_ms']:.0f} ms"
        lines.append(
            f"| {'Baldur' if variant == 'baldur' else 'bare Flask'} | {'yes' if stamped else 'no'} | {clients} "
            f"| {factor:g}× | {m['goodput_share']:.2f} | {m['served_p50_ms']:.0f} ms | {m['served_p99_ms']:.0f} ms "
            f"| {m['served_p99_ms'] / unloaded.get(variant, float('nan')):.2f}× | {m['shed_share']:.1%} "
            f"| {shed_p50} | {m['answers_503']:.0f} |")
    done = f"{rounds} rounds of {seconds:g} s per level" if rounds and seconds else "levels"
    lines += ["",
              f"- method: gunicorn `-w 2 -k gthread --threads 8`, a view that sleeps {SLEEP_MS} ms (capacity ≈ "
              f"{CAPACITY:.0f} requests/s); unloaded p99 (at 0.25×): "
              + ", ".join(f"{'Baldur' if v == 'baldur' else 'bare Flask'} {p:.0f} ms" for v, p in unloaded.items())
              + f"; {done}, variants alternating, medians over rounds; the server drains between levels",
              "- load: `benchmarks/open_loop.py`, a small asyncio generator (nothing maintained here both holds an "
              "arrival rate and sets a per-request header): request *i* starts at *i* ÷ rate whatever the server "
              "does, each on its own connection, stamped `X-Request-Start: t=<ms>` at send time as nginx would "
              "(or not stamped); goodput counts the 2xx answers completed while the load lasted",
              "- clients: `none` never retry (pure open loop); `immediate` retry a 503 at once (up to 3 times, a "
              "herd); `retry-after` retry after the answer's `Retry-After`",
              "- limits: the generator is one Python process sharing the 2 cores with the server, so at 4× and "
              "8× (640 and 1 280 new connections per second) it and the 503s compete with the app for CPU and "
              "its own scheduling lag adds to every latency it measures"]
    return "\n".join(lines)


def chart(results: list[LevelResult], path: Path) -> None:
    """Goodput and served p99 against offered load: bare Flask, Baldur with and without the header."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    unloaded = statistics.median(x.served_p99_ms for x in results if x.extra.get("unloaded"))
    lines = {"bare Flask": ("bare", True), "Baldur, X-Request-Start": ("baldur", True),
             "Baldur, no header": ("baldur", False)}
    figure, (goodput, p99) = plt.subplots(1, 2, figsize=(10, 4))
    for label, (variant, stamped) in lines.items():
        runs = [x for x in results if x.variant == variant and x.stamped == stamped and x.clients == "none"
                and not x.extra.get("unloaded")]
        factors = sorted({x.factor for x in runs})
        goodput.plot(factors, [statistics.median(x.goodput_share for x in runs if x.factor == f) for f in factors],
                     marker="o", label=label)
        p99.plot(factors, [statistics.median(x.served_p99_ms for x in runs if x.factor == f) / unloaded
                           for f in factors], marker="o", label=label)
    goodput.set(xlabel="offered load (× capacity)", ylabel="goodput (2xx/s ÷ capacity)", xscale="log", ylim=(0, 1.1))
    ticks = sorted({x.factor for x in results if not x.extra.get("unloaded")})
    p99.set(xlabel="offered load (× capacity)", ylabel="served p99 ÷ unloaded p99", xscale="log", yscale="log")
    for axes in (goodput, p99):
        axes.set_xticks(ticks, [f"{f:g}×" for f in ticks])
        axes.minorticks_off()
        axes.legend()
        axes.grid(alpha=0.3)
    figure.suptitle("Open-loop overload: gunicorn gthread, 2 × 8 threads, 100 ms view")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
