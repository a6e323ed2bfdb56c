"""Real servers on loopback driven by wrk: throughput and latency, and overload.

**Servers.** For each server (gunicorn ``-w 2`` sync, gunicorn ``-w 2 -k gthread
--threads 8``, uvicorn ``--workers 2`` serving the Flask app through a2wsgi),
one server per variant runs at once, each on its own port; round after round
wrk drives each in turn (the order rotating) for a fixed time with the same
connections, and reports requests per second, p50, p99 and non-2xx answers.
Idle servers cost nothing measurable, so drift hits all variants alike.

**Overload.** A view that sleeps 50 ms on gunicorn gthread (2 workers × 8
threads: at most 16 requests in service, ≈ 320 per second) driven by ever more
connections, with and without Baldur's backpressure. Every request carries its
send time in ``X-Request-Start`` (wrk's script stamps it, as a router would);
Baldur runs with its defaults: the adaptive controller answers 503 at once to
a request that waited past the target while a queue stands (see
docs/backpressure.md). The script measures the latency of the served (2xx) and
the shed (503) answers apart. The load is a closed loop (a shed client returns
at once); ``open_loop.py`` offers production-like open-loop load.

wrk shares the machine's cores with the servers; every figure is a ratio to a
baseline measured in the same run.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_common import (
    DEADLINE,
    HERE,
    PYTHON,
    before_checkout,
    before_env,
    child_env,
    fmt,
    log,
    median,
    paired_ratio,
    processes,
    ratio,
    rotated,
    table,
    wait_for_http,
)

WRK_REPORT = HERE / "wrk" / "report.lua"
WRK_OVERLOAD = HERE / "wrk" / "overload.lua"
LIMIT = "1000000/hour"
#: wrk stops each thread after this many responses, whatever its -d says.
MAX_REQUESTS = 2_000_000
#: Connections of the throughput runs (as many as gthread's 2 × 8 threads).
CONNECTIONS = 16
#: The overload scenario's view.
SLEEP_MS = 50
INSTALL_WRK = ("wrk (the HTTP load generator) is not installed, so the server and overload scenarios are skipped. "
               "Install it from your system's packages: `sudo apt-get install wrk` (Debian, Ubuntu), "
               "`sudo dnf install wrk` (Fedora), `brew install wrk` (macOS); then rerun.")


def wrk_binary() -> str | None:
    return shutil.which("wrk")


def _gunicorn_supports_no_control_socket() -> bool:
    try:
        from gunicorn.config import KNOWN_SETTINGS  # type: ignore[import-untyped]
    except ImportError:
        return False
    return any(setting.name == "control_socket_disable" for setting in KNOWN_SETTINGS)


def server_command(server: str, port: int, wsgi_app: str = "bench_apps:app") -> list[str]:
    bind = f"127.0.0.1:{port}"
    if server in ("gunicorn-sync", "gunicorn-gthread"):
        args = [PYTHON, "-m", "gunicorn", "-w", "2", "-b", bind, "--log-level", "warning", "--graceful-timeout", "3"]
        if server == "gunicorn-gthread":
            args += ["-k", "gthread", "--threads", "8"]
        if _gunicorn_supports_no_control_socket():
            args.append("--no-control-socket")  # gunicorn ≥ 25 would share one socket under $HOME
        return [*args, wsgi_app]
    if server == "uvicorn":
        return [PYTHON, "-m", "uvicorn", "--workers", "2", "--host", "127.0.0.1", "--port", str(port),
                "--no-access-log", "--log-level", "warning", "bench_apps:asgi"]
    raise ValueError(server)


SERVERS = {
    "gunicorn-sync": "gunicorn -w 2 (sync)",
    "gunicorn-gthread": "gunicorn -w 2 --threads 8 (gthread)",
    "uvicorn": "uvicorn --workers 2 + a2wsgi",
}


@dataclass
class Variant:
    key: str
    label: str
    env: dict[str, str]
    runs: list[dict[str, Any]] = field(default_factory=list)

    def figure(self, name: str) -> float:
        return median(run[name] for run in self.runs)


#: Django's rows (benchmarks/bench_django.py, WSGI: gunicorn only), each compared with bare Django.
DJANGO = (("django-bare", "bare Django", {"BENCH_DJANGO": "bare"}),
          ("django-baldur-memory", "Django + Baldur quickstart, memory", {"BENCH_DJANGO": "baldur"}),
          ("django-ratelimit", "Django + django-ratelimit, local-memory cache",
           {"BENCH_DJANGO": "ratelimit", "BENCH_LIMIT": "1000000/h"}))


def variants(redis_url: str | None, server: str = "gunicorn-sync") -> list[Variant]:
    found = [Variant("bare", "bare Flask", {"BENCH_APP": "bare"}),
             Variant("baldur-memory", "Baldur quickstart, memory", {"BENCH_APP": "quickstart"})]
    if server.startswith("gunicorn"):
        found += [Variant(key, label, dict(env)) for key, label, env in DJANGO]
    if redis_url is not None:
        found += [
            Variant("baldur-redis-breaker", "Baldur quickstart, Redis, no limit (breaker only)",
                    {"BENCH_APP": "quickstart", "BALDUR_REDIS_URL": redis_url}),
            Variant("baldur-redis", "Baldur quickstart, Redis, rate limit on",
                    {"BENCH_APP": "quickstart", "BALDUR_REDIS_URL": redis_url, "BALDUR_RATE_LIMIT": LIMIT}),
            Variant("baldur-redis-view", "Baldur, Redis, limit on the view",
                    {"BENCH_APP": "view_limit", "BALDUR_REDIS_URL": redis_url, "BENCH_LIMIT": LIMIT}),
            Variant("limiter-redis", "Flask-Limiter, Redis",
                    {"BENCH_APP": "limiter", "BENCH_LIMITER_STORAGE": redis_url}),
            Variant("floor", "floor: one plain EVALSHA",
                    {"BENCH_APP": "floor", "BENCH_REDIS_URL": redis_url}),
            Variant("floor-async", "async floor: the same EVALSHA through redis.asyncio",
                    {"BENCH_APP": "floor_async", "BENCH_REDIS_URL": redis_url}),
        ]
    return found + before_variants(found, server)


#: The rows that ``BENCH_BEFORE`` runs again with an older checkout (``bench_common.before_checkout``).
BEFORE_KEYS = ("baldur-memory", "baldur-redis-breaker", "baldur-redis")


def before_variants(found: list[Variant], server: str) -> list[Variant]:
    before = before_checkout()
    if before is None or server != "gunicorn-sync":
        return []
    checkout, revision = before
    return [Variant(f"before-{v.key}", f"{v.label} — before ({revision})", before_env(v.env, checkout))
            for v in found if v.key in BEFORE_KEYS]


# -- one server, one wrk run ------------------------------------------------------

@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/demo"


def start_server(server: str, env: dict[str, str], workdir: Path, name: str) -> Server:
    from bench_common import free_port

    port = free_port()
    log_path = workdir / f"{server}-{name}.log"
    wsgi_app = "bench_django:application" if "BENCH_DJANGO" in env else "bench_apps:app"
    proc = processes.start(server_command(server, port, wsgi_app), env=child_env(**env), log_path=log_path)
    return Server(proc, port, log_path)


def ready(server: Server) -> None:
    status, body = wait_for_http(server.url, server.proc, server.log_path)
    if status != 200:
        raise RuntimeError(f"{server.url} answered {status}: {body[:200]!r}")


def run_wrk(wrk: str, url: str, *, seconds: float, connections: int, script: Path, threads: int = 1,
            timeout: float = 5.0, close: bool = False) -> dict[str, Any]:
    """One wrk run, bounded by -d and by MAX_REQUESTS responses per thread; its JSON summary line.

    ``close``: every request on a new connection (``Connection: close``).
    """
    args = [wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", f"--timeout={timeout:.0f}s",
            *(["-H", "Connection: close"] if close else []), "-s", str(script), url, "--", str(MAX_REQUESTS)]
    proc = processes.start(args, env=child_env(), stdout=subprocess.PIPE)
    try:
        out, _ = proc.communicate(timeout=seconds + timeout + DEADLINE)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"wrk did not finish in time: {' '.join(args)}") from None
    finally:
        processes.stop(proc)
    for line in out.decode(errors="replace").splitlines():
        if line.startswith("BENCH "):
            result: dict[str, Any] = json.loads(line[6:])
            seconds_run = result["duration_us"] / 1e6
            result["rps"] = result["requests"] / seconds_run if seconds_run else 0.0
            return result
    raise RuntimeError(f"wrk printed no summary:\n{out.decode(errors='replace')[-2000:]}")


# -- the server scenario ----------------------------------------------------------------

@dataclass
class ServerResult:
    server: str
    variants: list[Variant]


def run_servers(wrk: str, servers: list[str], redis_url: str | None, workdir: Path, rounds: int, seconds: float,
                warmup: float, flush: Callable[[], None]) -> list[ServerResult]:
    results = []
    for server in servers:
        todo = variants(redis_url, server)
        flush()
        started: dict[str, Server] = {}
        try:
            for variant in todo:
                started[variant.key] = start_server(server, variant.env, workdir, variant.key)
            for variant in todo:
                ready(started[variant.key])
                log(f"[{server}] {variant.label}: warm-up")
                run_wrk(wrk, started[variant.key].url, seconds=warmup, connections=CONNECTIONS, script=WRK_REPORT,
                        close=True)
            keys = [v.key for v in todo]
            by_key = {v.key: v for v in todo}
            for r in range(rounds):
                for key in rotated(keys, r):
                    log(f"[{server}] {by_key[key].label}: round {r + 1}/{rounds}")
                    by_key[key].runs.append(run_wrk(wrk, started[key].url, seconds=seconds,
                                                    connections=CONNECTIONS, script=WRK_REPORT, close=True))
        finally:
            for s in started.values():
                processes.stop(s.proc)
        results.append(ServerResult(server, todo))
    return results


#: Besides its bare framework, each variant compared with these variants of its server (the figure's name).
_COMPARED = {"floor": "vs_floor", "floor-async": "vs_floor_async", "limiter-redis": "vs_limiter"}


def _rps(variant: Variant) -> list[float]:
    return [run["rps"] for run in variant.runs]


def report_servers(results: list[ServerResult], rounds: int, seconds: float) -> tuple[str, dict[str, float]]:
    figures: dict[str, float] = {}
    text = []
    for result in results:
        by_key = {v.key: v for v in result.variants}
        rows = []
        for v in result.variants:
            rps = v.figure("rps")
            # Django's rows against bare Django: each framework's own baseline.
            base = "django-bare" if v.key.startswith("django-") else "bare"
            figures[f"{result.server}/{v.key}/rps"] = rps
            figures[f"{result.server}/{v.key}/ratio"] = paired_ratio(_rps(v), _rps(by_key[base]))
            for other, figure in _COMPARED.items():
                figures[f"{result.server}/{v.key}/{figure}"] = (
                    paired_ratio(_rps(v), _rps(by_key[other])) if other in by_key else float("nan"))
            figures[f"{result.server}/{v.key}/p50_ms"] = v.figure("p50_us") / 1000
            figures[f"{result.server}/{v.key}/p99_ms"] = v.figure("p99_us") / 1000
            non2xx = sum(run["non2xx"] for run in v.runs)
            errors = sum(run["connect"] + run["read"] + run["write"] + run["timeout"] for run in v.runs)
            low, high = min(run["rps"] for run in v.runs), max(run["rps"] for run in v.runs)
            rows.append([v.label, f"{rps:.0f}", f"{low:.0f}–{high:.0f}",
                         fmt(figures[f"{result.server}/{v.key}/ratio"]),
                         "–" if v.key.removeprefix("before-") in ("bare", "floor", "floor-async", "baldur-memory",
                                                                  "baldur-redis-breaker")
                         or v.key.startswith("django-")
                         else fmt(figures[f"{result.server}/{v.key}/vs_floor"]),
                         fmt(v.figure("p50_us") / 1000), fmt(v.figure("p99_us") / 1000),
                         f"{non2xx} / {sum(run['requests'] for run in v.runs)}", str(errors)])
        text += [f"### {SERVERS[result.server]}", "",
                 table(["variant", "requests/s (median)", "range over rounds", "× bare (its framework's)", "× floor",
                        "p50 (ms)", "p99 (ms)",
                        "non-2xx / requests (all rounds)", "socket errors"], rows), ""]
    text += [f"- method: {rounds} rounds of {seconds:.0f} s per variant and server, variants in rotating order, "
             f"all of one server's variants running at once on their own ports (idle between their turns); "
             f"`wrk -t1 -c{CONNECTIONS}` on loopback, one `GET /demo` per request, each on a new connection "
             "(`Connection: close`); requests/s and latencies are medians over rounds, each ratio the median "
             "of its rounds' ratios (a variant ÷ its baseline in the same round); p50 and p99 are wrk's, "
             "with every connection kept busy "
             "(closed loop), so they include queueing in the server",
             "- why a new connection per request: gunicorn's sync worker closes after each response anyway, and "
             "nginx talks to its upstream that way by default; with keep-alive, wrk's connections, opened all at "
             "once, split between the 2 workers by chance once per run (one worker often takes most), and "
             "throughput swings up to 2× from run to run with the split, drowning the differences measured here",
             "- wrk runs on the same 2 cores as the servers and Redis: absolute figures are lower than on a "
             "dedicated machine; the ratios are what to compare",
             "- uvicorn: uvloop + httptools, the Flask app behind a2wsgi's `WSGIMiddleware` (a thread pool of "
             "10 per worker)",
             "- `no limit (breaker only)`: the quickstart with `BALDUR_REDIS_URL` and nothing else; its closed "
             "breaker is admitted from the worker's mirror (no Redis command per request, successes written "
             "behind), so it is compared with bare Flask, not with the floor",
             f"- Redis variants: `BALDUR_RATE_LIMIT={LIMIT}` for Baldur (read by the quickstart's `init_flask`), "
             f"the same `{LIMIT}` default limit for Flask-Limiter (fixed window); "
             "`limit on the view` is `@baldur.protected(\"demo\", rate_limit=...)` with no app-wide limit, "
             "whose admission is one script; the floor's view runs one `EVALSHA` of "
             "`return redis.call('INCR', KEYS[1])` through redis-py's sync client",
             "- `async floor`: the same `EVALSHA` through `redis.asyncio` at its leanest (the request thread drives "
             "an event loop of its own, on a connection of its own, the command packed once; no pool, no timeout, "
             "no store): what any async design pays for one round trip from a sync view, so it bounds what "
             "Baldur's async core can reach on the floor's row"]
    return "\n".join(text), figures


# -- the overload scenario -------------------------------------------------------------------

@dataclass
class OverloadVariant:
    key: str
    label: str
    env: dict[str, str]
    runs: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # connections → runs

    def figure(self, connections: int, name: str) -> float:
        return median(run[name] for run in self.runs.get(connections, []))


def overload_variants() -> list[OverloadVariant]:
    slow = {"BENCH_APP": "slow", "BENCH_SLEEP_MS": str(SLEEP_MS)}
    return [OverloadVariant("bare", "bare Flask", slow),
            OverloadVariant("baldur", "Baldur, default (adaptive) shedding", {**slow, "BENCH_BALDUR": "1"})]


def _drain(server: Server) -> None:
    """Wait (bounded) until the server answers promptly: no backlog of the last run is left."""
    from bench_common import http_get

    end = time.monotonic() + DEADLINE
    time.sleep(0.3)
    while time.monotonic() < end:
        started = time.monotonic()
        with contextlib.suppress(OSError):
            http_get(server.url, timeout=5.0)
        if time.monotonic() - started < 2 * SLEEP_MS / 1000 + 0.05:
            return
    log(f"[overload] the server at {server.url} still answers slowly after {DEADLINE:.0f} s")


@dataclass
class OverloadResult:
    variants: list[OverloadVariant]
    levels: list[int]


def run_overload(wrk: str, workdir: Path, levels: list[int], rounds: int, seconds: float) -> OverloadResult:
    todo = overload_variants()
    started: dict[str, Server] = {}
    try:
        for variant in todo:
            started[variant.key] = start_server("gunicorn-gthread", variant.env, workdir, f"overload-{variant.key}")
        for variant in todo:
            ready(started[variant.key])
            run_wrk(wrk, started[variant.key].url, seconds=1, connections=4, script=WRK_OVERLOAD, close=True)
        keys = [v.key for v in todo]
        by_key = {v.key: v for v in todo}
        for connections in levels:
            for r in range(rounds):
                for key in rotated(keys, r):
                    log(f"[overload] {by_key[key].label}, {connections} connections: round {r + 1}/{rounds}")
                    _drain(started[key])
                    run = run_wrk(wrk, started[key].url, seconds=seconds, connections=connections,
                                  script=WRK_OVERLOAD, timeout=10.0, close=True)
                    answered = run["served"] + run["shed"] + run["other"]
                    run["shed_share"] = run["shed"] / answered if answered else float("nan")
                    run["served_rps"] = run["served"] / (run["duration_us"] / 1e6)
                    by_key[key].runs.setdefault(connections, []).append(run)
    finally:
        for s in started.values():
            processes.stop(s.proc)
    return OverloadResult(todo, levels)


def report_overload(result: OverloadResult, rounds: int, seconds: float) -> tuple[str, dict[str, float]]:
    figures: dict[str, float] = {}
    rows = []
    unloaded = result.levels[0]
    for v in result.variants:
        base = v.figure(unloaded, "served_p99_us")
        for connections in result.levels:
            p99 = v.figure(connections, "served_p99_us")
            figures[f"{v.key}/{connections}/served_p99_ms"] = p99 / 1000
            figures[f"{v.key}/{connections}/served_p50_ms"] = v.figure(connections, "served_p50_us") / 1000
            figures[f"{v.key}/{connections}/shed_share"] = v.figure(connections, "shed_share")
            figures[f"{v.key}/{connections}/served_rps"] = v.figure(connections, "served_rps")
            figures[f"{v.key}/{connections}/vs_unloaded"] = ratio(p99, base)
            shed_p50 = v.figure(connections, "shed_p50_us")
            rows.append([v.label, str(connections), f"{v.figure(connections, 'served_rps'):.0f}",
                         fmt(v.figure(connections, "served_p50_us") / 1000, 1), fmt(p99 / 1000, 1),
                         fmt(ratio(p99, base)), f"{100 * v.figure(connections, 'shed_share'):.0f} %",
                         "–" if shed_p50 < 0 else fmt(shed_p50 / 1000, 1),
                         str(sum(run["other"] + run["timeout"] for run in v.runs.get(connections, [])))])
    text = [table(["variant", "connections", "served/s", "served p50 (ms)", "served p99 (ms)",
                   "served p99 ÷ unloaded p99", "shed (503)", "shed p50 (ms)", "other answers + timeouts"], rows),
            "",
            f"- method: gunicorn `-w 2 -k gthread --threads 8`, a view that sleeps {SLEEP_MS} ms (capacity ≈ "
            f"{int(16 * 1000 / SLEEP_MS)} requests/s); `wrk -t1 -c<connections>`, each request on a new "
            "connection as in the server scenario (closed loop: a client whose request was answered sends the "
            f"next at once); {unloaded} connections is the unloaded baseline; "
            f"{rounds} rounds of {seconds:.0f} s per level and variant, variants alternating, medians over rounds; "
            "the server is given time to drain its queue between runs",
            "- every request carries `X-Request-Start: t=<µs>` stamped by wrk's script at send time; the app "
            "echoes it back, so the script measures served (2xx) and shed (503) latencies apart; the bare app "
            "ignores the header",
            "- Baldur: the quickstart's `init_flask(app)` + `@baldur.protected`, memory store, default settings: "
            "the adaptive controller (docs/backpressure.md) answers 503 before Flask routes it to a request "
            "that waited past its target while a queue stands",
            "- under a closed loop a shed client comes straight back, so the shed share counts those retries: "
            "it says how much of the offered load was turned away, not how many users were"]
    return "\n".join(text), figures
