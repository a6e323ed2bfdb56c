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
    factors = [float(f) for f in args.factors.split(",")]
    slow = {"BENCH_APP": "slow", "BENCH_SLEEP_MS": str(SLEEP_MS)}
    variants = {"bare": slow, "baldur": {**slow, "BENCH_BALDUR": "1"}}
    workdir = Path("/tmp/open_loop_logs")
    workdir.mkdir(exist_ok=True)
    servers = {name: start_server("gunicorn-gthread", env, workdir, f"open-{name}") for name, env in variants.items()}
    results: list[LevelResult] = []
    try:
        for server in servers.values():
            ready(server)
        plans = [(True, "none"), (False, "none"), (True, "immediate"), (True, "retry-after")]
        for r in range(args.rounds):
            for name, server in servers.items():  # alternating variants within each round
                _settle_server(server)
                unloaded = measure(server, name, 0.25, args.seconds, True, "none")
                unloaded.extra["unloaded"] = 1
                results.append(unloaded)
                for stamped, clients in plans:
                    if name == "bare" and clients != "none":
                        continue  # bare Flask never sheds: its clients have nothing to retry
                    for factor in factors:
                        _settle_server(server)
                        log(f"[open-loop] round {r + 1}: {name}, {factor}×, stamped={stamped}, clients={clients}")
                        results.append(measure(server, name, factor, args.seconds, stamped, clients))
    finally:
        for server in servers.values():
            processes.stop(server.proc)
    args.out.write_text(json.dumps([asdict(x) for x in results], indent=1))
    print(report(results))


def report(results: list[LevelResult]) -> str:
    """Medians over rounds, per variant, header, clients and level."""
    keys: dict[tuple[str, bool, str, float], list[LevelResult]] = {}
    unloaded: dict[str, list[float]] = {}
    for x in results:
        if x.extra.get("unloaded"):
            unloaded.setdefault(x.variant, []).append(x.served_p99_ms)
        else:
            keys.setdefault((x.variant, x.stamped, x.clients, x.factor), []).append(x)
    lines = [f"capacity ≈ {CAPACITY:.0f} requests/s (gunicorn -w 2 --threads 8 gthread, {SLEEP_MS} ms view)",
             *(f"unloaded p99 ({v}): {statistics.median(p):.0f} ms" for v, p in unloaded.items()), "",
             "| variant | X-Request-Start | clients | offered | goodput / capacity | served p50 | served p99 "
             "| p99 / unloaded p99 | shed share | shed p50 | 503s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (variant, stamped, clients, factor), runs in keys.items():
        def med(name: str, runs: list[LevelResult] = runs) -> float:
            return statistics.median(getattr(x, name) for x in runs)
        base = statistics.median(unloaded.get(variant, [float("nan")]))
        lines.append(
            f"| {variant} | {'yes' if stamped else 'no'} | {clients} | {factor:g}× | {med('goodput_share'):.2f} "
            f"| {med('served_p50_ms'):.0f} ms | {med('served_p99_ms'):.0f} ms | {med('served_p99_ms') / base:.2f}× "
            f"| {med('shed_share'):.1%} | {med('shed_p50_ms'):.1f} ms | {med('answers_503'):.0f} |")
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
    p99.set(xlabel="offered load (× capacity)", ylabel="served p99 ÷ unloaded p99", xscale="log", yscale="log")
    for axes in (goodput, p99):
        axes.legend()
        axes.grid(alpha=0.3)
    figure.suptitle("Open-loop overload: gunicorn gthread, 2 × 8 threads, 100 ms view")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
