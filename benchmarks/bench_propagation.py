"""How long an opened breaker takes to reach every worker's mirror, under load.

gunicorn ``-w 2`` (sync) serves the quickstart on Redis (``BENCH_APP=propagation``:
each worker also runs a thread that watches its mirror of the breaker
``bench-propagation`` every 0.5 ms and reports each change with the wall-clock
time to a Redis list). wrk loads ``GET /demo`` all along. For each opening this
process resets the breaker (a published close), waits until every worker's
mirror reads closed, notes the time, opens the breaker the way production does
(an admission, then one failure past ``consecutive_failures=1``: the finish
script opens it and publishes), and waits until every worker has reported the
open. The latency of one worker for one opening is its report's time minus the
noted time: it includes the failure's own round trip and the watcher's 0.5 ms
resolution, so it overstates what a request would see.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench_apps import PROPAGATION_BREAKER, PROPAGATION_REPORTS
from bench_common import DEADLINE, child_env, fmt, free_port, log, processes, table, wait_for_http
from bench_servers import CONNECTIONS, MAX_REQUESTS, WRK_REPORT, server_command

WORKERS = 2


@dataclass
class PropagationResult:
    openings: int
    latencies_ms: list[float] = field(default_factory=list)
    missed: int = 0


class _Reports:
    """The workers' reports, read in order: the latest state and its time per worker."""

    def __init__(self, client: object) -> None:
        self.client = client
        self.read = 0
        self.latest: dict[str, tuple[str, float]] = {}

    def poll(self) -> None:
        entries = self.client.lrange(PROPAGATION_REPORTS, self.read, -1)  # type: ignore[attr-defined]
        self.read += len(entries)
        for entry in entries:
            pid, state, at = entry.decode().split(" ")
            self.latest[pid] = (state, float(at))

    def wait(self, done: Callable[[], bool], what: str, nudge: Callable[[], None] | None = None) -> bool:
        """Poll until ``done()``; ``nudge()`` again every half second (a worker that was not yet
        subscribed when it was first published hears it then)."""
        end = time.monotonic() + DEADLINE
        nudged = time.monotonic()
        while time.monotonic() < end:
            self.poll()
            if done():
                return True
            if nudge is not None and time.monotonic() - nudged > 0.5:
                nudge()
                nudged = time.monotonic()
            time.sleep(0.002)
        log(f"[propagation] {what}: not within {DEADLINE:.0f} s ({self.latest})")
        return False


def run(wrk: str, redis_url: str, workdir: Path, openings: int) -> PropagationResult:
    import redis

    from baldur.bridges import SyncOverAsync
    from baldur.policies.breaker import Breaker, Outcome, State
    from baldur.stores._types import Plan
    from baldur.stores.redis import RedisStore

    result = PropagationResult(openings)
    client = redis.Redis.from_url(redis_url, socket_timeout=5.0)
    client.delete(PROPAGATION_REPORTS)
    opener = SyncOverAsync(RedisStore(redis_url, redacted_url=redis_url, timeout=2.0))
    breaker = Breaker(consecutive_failures=1, failure_rate=None, open_for=3600.0)
    plan = Plan(PROPAGATION_BREAKER, breaker.inherit(Breaker()), None, None)
    port = free_port()
    log_path = workdir / "propagation.log"
    server = processes.start(server_command("gunicorn-sync", port),
                             env=child_env(BENCH_APP="propagation", BALDUR_REDIS_URL=redis_url), log_path=log_path)
    load: subprocess.Popen[bytes] | None = None
    reports = _Reports(client)
    try:
        url = f"http://127.0.0.1:{port}/demo"
        wait_for_http(url, server, log_path)
        seconds = max(5, round(openings * 0.2 + DEADLINE))
        load = processes.start([wrk, "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout=5s",
                                "-H", "Connection: close", "-s", str(WRK_REPORT), url, "--", str(MAX_REQUESTS)],
                               env=child_env(), stdout=subprocess.DEVNULL)
        def reset() -> None:
            opener.force_breaker(PROPAGATION_BREAKER, plan.breaker, State.CLOSED)  # type: ignore[arg-type]

        for index in range(openings):
            reset()
            if not reports.wait(lambda: len(reports.latest) >= WORKERS and all(
                    state == "closed" for state, _ in reports.latest.values()), "every mirror reads closed", reset):
                result.missed += 1
                continue
            if index % 50 == 0:
                log(f"[propagation] opening {index + 1}/{openings}")
            ticket = opener.admit(plan)
            opened_at = time.time()
            opener.finish(ticket, Outcome.FAILURE)
            if not reports.wait(lambda: all(state == "open" for state, _ in reports.latest.values()),
                                "every mirror reads open"):
                result.missed += 1
                continue
            result.latencies_ms += [(at - opened_at) * 1000 for _, at in reports.latest.values()]
    finally:
        if load is not None:
            processes.stop(load)
        processes.stop(server)
        opener.close()
        client.close()
    return result


def _percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def report(result: PropagationResult) -> tuple[str, dict[str, float]]:
    values = result.latencies_ms
    figures = {"p50_ms": _percentile(values, 0.5), "p99_ms": _percentile(values, 0.99),
               "max_ms": max(values) if values else float("nan"), "openings": float(result.openings),
               "workers": float(WORKERS), "missed": float(result.missed)}
    rows = [[f"{result.openings}", f"{len(values)}", fmt(figures["p50_ms"], 2), fmt(figures["p99_ms"], 2),
             fmt(figures["max_ms"], 2), str(result.missed)]]
    text = [table(["openings", "worker × opening samples", "p50 (ms)", "p99 (ms)", "max (ms)", "missed"], rows), "",
            "- method: gunicorn `-w 2` (sync) serving the quickstart on Redis while "
            f"`wrk -t1 -c{CONNECTIONS}` loads `GET /demo` (each request on a new connection); for each opening "
            "the breaker is reset (a published close) and every worker's mirror is seen closed, then it is "
            "opened the way production opens it (one failure past `consecutive_failures=1`, recorded by the "
            "finish script, which publishes the change); each worker's thread polls its mirror every 0.5 ms and "
            "reports the change with the wall-clock time; a sample is that time minus the time just before "
            "the failure was sent (so it includes the failure's own round trip)",
            "- missed: openings for which a worker did not report within the deadline (none expected)"]
    return "\n".join(text), figures
