"""In-process request cost: ``app.wsgi_app`` called directly with a WSGI environ, and
the Redis commands that each request sends.

Each variant lives in its own worker process (``python bench_inprocess.py
--worker`` with ``BENCH_APP`` and ``BALDUR_*`` in its environment), because
Baldur's runtime, like Flask-Limiter's storage, is one per process. The
parent keeps every worker alive and, round after round, asks each in turn (the
order rotating) for one timing of N back-to-back requests: drift of the shared
machine hits every variant alike. A request is a fresh copy of one GET
``/demo`` environ, the body iterated and the returned iterable closed, as a
WSGI server does; the garbage collector stays on.

Redis commands per request come from ``INFO commandstats`` (calls over N
requests, after a pause for written-behind outcomes, divided by N), one
variant at a time on the shared redis-server; the slow log, recording every
command for that pass, tells Baldur's scripts apart by their key count
(admit: 3 keys, finish: 2, per-client rate: 1).
"""

from __future__ import annotations

import io
import json
import logging
import selectors
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import (
    DEADLINE,
    PYTHON,
    before_checkout,
    before_env,
    child_env,
    fmt,
    log,
    median,
    paired_ratio,
    processes,
    rotated,
    spread,
    table,
)

#: A timing never runs longer than this, whatever N it was asked for.
MAX_TIMING_SECONDS = 30.0
#: Nor more requests than this.
MAX_REQUESTS = 1_000_000
LIMIT = "1000000/hour"


@dataclass
class Variant:
    key: str
    label: str
    env: dict[str, str]
    redis: bool = False
    proc: subprocess.Popen[bytes] | None = None
    number: int = 0
    times: list[float] = field(default_factory=list)  # seconds per request, one per round
    commands: dict[str, float] = field(default_factory=dict)  # command sent → calls per request
    inner: dict[str, float] = field(default_factory=dict)  # command run inside a script → calls per request
    scripts: dict[str, float] = field(default_factory=dict)  # Baldur's script → EVALSHA calls per request
    truncated: bool = False  # the slow log overflowed: inner and scripts are undercounted
    server_us: float = 0.0  # µs per request that Redis spent executing the commands sent (slow log)


def variants(redis_url: str | None) -> list[Variant]:
    memory = [
        Variant("bare", "bare Flask", {"BENCH_APP": "bare"}),
        Variant("pybreaker", "pybreaker-wrapped view", {"BENCH_APP": "pybreaker"}),
        Variant("hooks", "Baldur's hook points, passing straight through", {"BENCH_APP": "hooks"}),
        Variant("quickstart-memory", "Baldur quickstart, memory", {"BENCH_APP": "quickstart"}),
        Variant("quickstart-memory-limit", "Baldur quickstart, memory, rate limit on",
                {"BENCH_APP": "quickstart", "BALDUR_RATE_LIMIT": LIMIT}),
        Variant("limiter-memory", "Flask-Limiter, memory", {"BENCH_APP": "limiter",
                                                              "BENCH_LIMITER_STORAGE": "memory://"}),
        *DJANGO,
    ]
    before = before_checkout()
    if before is not None:  # BENCH_BEFORE: the quickstart again, with an older checkout's Baldur
        checkout, revision = before
        memory.append(Variant("before-quickstart-memory", f"Baldur quickstart, memory — before ({revision})",
                              before_env({"BENCH_APP": "quickstart"}, checkout)))
    if redis_url is None:
        return memory
    return [*memory,
            Variant("floor", "floor: one plain EVALSHA (sync client)",
                    {"BENCH_APP": "floor", "BENCH_REDIS_URL": redis_url}, redis=True),
            Variant("quickstart-redis-limit", "Baldur quickstart, Redis, rate limit on",
                    {"BENCH_APP": "quickstart", "BALDUR_REDIS_URL": redis_url, "BALDUR_RATE_LIMIT": LIMIT},
                    redis=True),
            Variant("quickstart-redis", "Baldur quickstart, Redis, no rate limit",
                    {"BENCH_APP": "quickstart", "BALDUR_REDIS_URL": redis_url}, redis=True),
            Variant("view-limit-redis", "Baldur, Redis, limit on the view (`protected(rate_limit=)`)",
                    {"BENCH_APP": "view_limit", "BALDUR_REDIS_URL": redis_url, "BENCH_LIMIT": LIMIT},
                    redis=True),
            Variant("limiter-redis", "Flask-Limiter, Redis",
                    {"BENCH_APP": "limiter", "BENCH_LIMITER_STORAGE": redis_url}, redis=True)]


#: The Django rows (benchmarks/bench_django.py), each compared with bare Django.
DJANGO = [
    Variant("django-bare", "bare Django", {"BENCH_DJANGO": "bare"}),
    Variant("django-baldur", "Django + Baldur quickstart, memory", {"BENCH_DJANGO": "baldur"}),
    Variant("django-baldur-limit", "Django + Baldur quickstart, memory, rate limit on",
            {"BENCH_DJANGO": "baldur", "BALDUR_RATE_LIMIT": LIMIT}),
    Variant("django-ratelimit", "Django + django-ratelimit, local-memory cache",
            {"BENCH_DJANGO": "ratelimit", "BENCH_LIMIT": "1000000/h"}),
]


# -- the worker (a child process) ---------------------------------------------------

def requester(wsgi: Callable[..., Iterable[bytes]], statuses: dict[str, int]) -> Callable[[], bytes]:
    """One ``GET /demo`` through ``wsgi`` per call, as a WSGI server makes it: a fresh copy of
    one environ, the body iterated, the returned iterable closed; ``statuses`` counts the answers."""
    from werkzeug.test import EnvironBuilder

    builder = EnvironBuilder(path="/demo", method="GET", environ_base={"REMOTE_ADDR": "127.0.0.1"})
    template = builder.get_environ()
    builder.close()

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[..., Any]:
        code = status[:3]
        statuses[code] = statuses.get(code, 0) + 1
        return lambda data: None

    def one() -> bytes:
        environ = dict(template)
        environ["wsgi.input"] = io.BytesIO(b"")
        body = wsgi(environ, start_response)
        try:
            return b"".join(body)
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()

    return one


def _worker() -> int:
    # stdout is the channel to the parent: Baldur's log lines go to stderr (the worker's log).
    logging.getLogger("baldur").addHandler(logging.StreamHandler(sys.stderr))
    import os

    wsgi: Callable[..., Iterable[bytes]]
    if "BENCH_DJANGO" in os.environ:
        import bench_django

        wsgi = bench_django.application  # Django's WSGI handler: request, middleware, view, response
    else:
        import bench_apps

        wsgi = bench_apps.app.wsgi_app
    statuses: dict[str, int] = {}
    one = requester(wsgi, statuses)

    def timing(number: int) -> tuple[float, int]:
        number = min(number, MAX_REQUESTS)
        started = time.perf_counter()
        deadline = started + MAX_TIMING_SECONDS
        done = 0
        while done < number:
            one()
            done += 1
            if done % 256 == 0 and time.perf_counter() > deadline:
                break
        return time.perf_counter() - started, done

    answer = json.loads(one())
    if answer != {"status": "ok", "service": "demo"} or statuses != {"200": 1}:
        _reply({"error": f"the app answered {statuses} {answer!r}"})
        return 1
    started = time.perf_counter()
    while time.perf_counter() - started < 0.3:  # warm up: caches, connections, scripts loaded
        one()
    _reply({"ready": True})
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "quit":
            break
        statuses.clear()
        if command["cmd"] == "calibrate":
            number = 100
            while True:
                seconds, done = timing(number)
                if seconds >= command["target"] / 4 or number >= MAX_REQUESTS:
                    break
                number *= 4
            _reply({"number": max(100, int(done * command["target"] / seconds)), "statuses": statuses})
        elif command["cmd"] == "time":
            seconds, done = timing(int(command["number"]))
            _reply({"seconds": seconds, "done": done, "statuses": statuses})
    return 0


def _reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


# -- the parent ---------------------------------------------------------------------

class Worker:
    """One variant's worker process and its line protocol (every read bounded in time)."""

    def __init__(self, variant: Variant, workdir: Path) -> None:
        self.variant = variant
        self.log_path = workdir / f"inprocess-{variant.key}.log"
        self.proc = processes.start([PYTHON, __file__, "--worker"], env=child_env(**variant.env),
                                    log_path=self.log_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        variant.proc = self.proc
        self._selector = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        self._selector.register(self.proc.stdout, selectors.EVENT_READ)

    def read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        if not self._selector.select(timeout):
            raise RuntimeError(f"{self.variant.label}: no answer within {timeout:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            log_text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            raise RuntimeError(f"{self.variant.label}: the worker exited ({self.proc.poll()}):\n{log_text[-3000:]}")
        message: dict[str, Any] = json.loads(line)
        if "error" in message:
            raise RuntimeError(f"{self.variant.label}: {message['error']}")
        return message

    def ask(self, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        self.proc.stdin.flush()
        return self.read(timeout)

    def stop(self) -> None:
        try:
            if self.proc.poll() is None and self.proc.stdin is not None:
                self.proc.stdin.write(b'{"cmd": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            self._selector.close()
            processes.stop(self.proc)


def _check_statuses(variant: Variant, statuses: dict[str, int]) -> None:
    if set(statuses) - {"200"}:
        raise RuntimeError(f"{variant.label}: answers other than 200 during a timing: {statuses}")


@dataclass
class Result:
    variants: list[Variant]
    rounds: int
    target: float
    notes: list[str]


def run(rounds: int, target: float, redis_url: str | None, workdir: Path, command_requests: int,
        notes: list[str]) -> Result:
    todo = variants(redis_url)
    workers: dict[str, Worker] = {}
    try:
        for variant in todo:
            workers[variant.key] = Worker(variant, workdir)
        for variant in todo:
            workers[variant.key].read(DEADLINE)
            reply = workers[variant.key].ask({"cmd": "calibrate", "target": target}, DEADLINE * 2)
            _check_statuses(variant, reply["statuses"])
            variant.number = int(reply["number"])
        keys = [v.key for v in todo]
        by_key = {v.key: v for v in todo}
        for r in range(rounds):
            for key in rotated(keys, r):
                variant = by_key[key]
                log(f"[in-process] {variant.label}: round {r + 1}/{rounds}")
                reply = workers[key].ask({"cmd": "time", "number": variant.number}, DEADLINE * 2)
                _check_statuses(variant, reply["statuses"])
                variant.times.append(reply["seconds"] / reply["done"])
        if redis_url is not None:
            count_commands([v for v in todo if v.redis], workers, redis_url, command_requests)
    finally:
        for worker in workers.values():
            worker.stop()
    return Result(todo, rounds, target, notes)


# -- Redis commands per request ------------------------------------------------------

#: Commands that the harness itself sends while counting.
_OURS = {"config", "slowlog", "info", "flushall", "ping", "client"}


def _baldur_scripts() -> dict[str, str]:
    """SHA1 → name of each of Baldur's Lua scripts (as the Redis store sends them)."""
    try:
        from importlib import resources

        from baldur.stores.redis import _Script
    except ImportError:
        return {}
    folder = resources.files("baldur.stores") / "redis_scripts"
    names = [entry.name.removesuffix(".lua") for entry in folder.iterdir()
             if entry.name.endswith(".lua") and not entry.name.startswith("_")]
    found = {}
    for name in names:
        try:
            found[_Script(name).sha] = name
        except Exception:  # a script the store builds differently: named by its key count instead
            continue
    return found


def count_commands(todo: list[Variant], workers: dict[str, Worker], redis_url: str, requests: int) -> None:
    """Per variant: the commands its requests send (round trips) and those its scripts run inside Redis.

    Two passes of N requests each. The first, with nothing else recording,
    reads ``INFO commandstats``: calls and the µs Redis spent per command. The
    second has the slow log record every command: the ones run inside scripts
    come from client ``?:0`` and are taken off the counts of the first pass,
    and each ``EVALSHA``'s SHA1 names which of Baldur's scripts ran.
    """
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5.0)
    capacity = max(1024, requests * 24)
    known = _baldur_scripts()

    def requests_of(variant: Variant) -> int:
        time.sleep(0.2)  # written-behind outcomes of earlier requests are sent by now
        client.config_resetstat()
        client.slowlog_reset()
        reply = workers[variant.key].ask({"cmd": "time", "number": requests}, DEADLINE * 2)
        _check_statuses(variant, reply["statuses"])
        time.sleep(0.3)  # this pass's written-behind successes are sent within 50 ms
        return int(reply["done"])

    try:
        client.config_set("slowlog-max-len", capacity)
        for variant in todo:
            log(f"[redis commands] {variant.label}: 2 × {requests} requests")
            done = requests_of(variant)
            stats = {key.removeprefix("cmdstat_"): value for key, value in client.info("commandstats").items()}
            client.config_set("slowlog-log-slower-than", 0)
            try:
                logged = requests_of(variant)
            finally:
                client.config_set("slowlog-log-slower-than", 10_000)
            entries = client.slowlog_get(capacity)
            inner: dict[str, int] = {}
            scripts: dict[str, int] = {}
            for entry in entries:
                command = entry.get("command", b"")
                args = (command.decode(errors="replace") if isinstance(command, bytes) else str(command)).split()
                if not args:
                    continue
                name = args[0].lower()
                address = entry.get("client_address", b"")
                if (address.decode(errors="replace") if isinstance(address, bytes) else str(address)) == "?:0":
                    inner[name] = inner.get(name, 0) + 1
                elif name == "evalsha" and len(args) > 2 and "BALDUR_REDIS_URL" in variant.env:
                    script = known.get(args[1].lower(), f"script of {args[2]} keys")
                    scripts[script] = scripts.get(script, 0) + 1
            counts: dict[str, float] = {}
            busy = 0.0
            for name, value in stats.items():
                if name.split("|")[0] in _OURS:
                    continue
                calls = int(value["calls"]) / done
                sent = calls - inner.get(name, 0) / logged
                if sent > 0.005:
                    counts[name] = sent
                    busy += float(value["usec"]) / done * (sent / calls)
            variant.commands = counts
            variant.inner = {name: calls / logged for name, calls in inner.items()}
            variant.scripts = {name: calls / logged for name, calls in scripts.items()}
            variant.server_us = busy
            variant.truncated = len(entries) >= capacity
    finally:
        client.close()


# -- report ---------------------------------------------------------------------------

def report(result: Result) -> tuple[str, dict[str, float]]:
    """The section's markdown and the figures the goals need."""
    by_key = {v.key: v for v in result.variants}
    text: list[str] = []
    figures: dict[str, float] = {}
    for framework, baseline in (("Flask", "bare"), ("Django", "django-bare")):
        bare = median(by_key[baseline].times)
        figures[f"{baseline.removesuffix('bare')}bare_us"] = bare * 1e6
        rows = []
        for v in result.variants:
            if v.key.startswith("django-") != (framework == "Django"):
                continue
            m = median(v.times)
            added = "–" if v.key == baseline else fmt((m - bare) * 1e6, 1)
            paired = paired_ratio(v.times, by_key[baseline].times)
            rows.append([v.label, fmt(m * 1e6, 1), added, fmt(paired), fmt(spread(v.times) * 1e6, 1),
                         str(v.number)])
            figures[f"{v.key}_ratio"] = paired
            figures[f"{v.key}_added_us"] = (m - bare) * 1e6
        if framework == "Django":
            text += ["", "Django (`benchmarks/bench_django.py`: its WSGI handler called the same way; each row "
                     "against bare Django):", ""]
        text.append(table(["variant", "median per request (µs)", f"added vs bare {framework} (µs)", "× bare",
                           "spread over rounds (µs)", "requests per timing"], rows))
    counted = [v for v in result.variants if v.commands]
    if counted:
        rows = []
        for v in counted:
            sent = ", ".join(f"{name} {value:.2f}" for name, value in sorted(v.commands.items()))
            scripts = ", ".join(f"{name} {value:.2f}" for name, value in sorted(v.scripts.items()))
            inner = sum(v.inner.values())
            total = sum(v.commands.values())
            rows.append([v.label, fmt(total), sent or "–", scripts or "–",
                         fmt(inner) + (" (slow log overflowed)" if v.truncated else ""), fmt(v.server_us, 1)])
            figures[f"{v.key}_commands"] = total
            if v.key == "quickstart-redis-limit":
                # On the critical path: the admissions (with the breaker read, or the limits alone) and
                # any command that is not a script. Not total − finish: the two passes flush written-behind
                # outcomes at different moments, so their difference is off by a few hundredths.
                figures["baldur_critical_commands"] = (v.scripts.get("admit", 0.0) + v.scripts.get("admit_limits", 0.0)
                                                       + total - v.commands.get("evalsha", 0.0))
        text += ["", "Redis commands per request: the commands each request sends (round trips), from "
                 "`INFO commandstats` over N requests ÷ N, written-behind outcomes included, less the "
                 "commands that scripts run inside Redis (counted apart, from the slow log in a second pass); "
                 "Redis busy is the time Redis spent executing the commands sent (`usec` of commandstats):", "",
                 table(["variant", "commands sent per request", "by command", "Baldur's scripts",
                        "commands run inside scripts", "Redis busy per request (µs)"], rows,
                       ["l", "r", "l", "l", "r", "r"])]
    text += ["", f"- method: {result.rounds} rounds; in each, every variant's worker process times N back-to-back "
             f"requests (N chosen so that a timing lasts ≈ {result.target} s), variants in rotating order; "
             "medians over rounds, each × bare the median of its rounds' ratios (to bare in the same round); "
             "`app.wsgi_app(environ, start_response)` with a fresh copy of one "
             "`GET /demo` environ per request, the body joined and `close()` called; gc on",
             f"- limits: `{LIMIT}` per client (never reached), Flask-Limiter's default strategy (fixed window); "
             "Baldur's `rate limit on` is `BALDUR_RATE_LIMIT` read by the quickstart's `init_flask(app)`",
             *[f"- {note}" for note in result.notes]]
    return "\n".join(text), figures


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        sys.exit(_worker())
    sys.exit("bench_inprocess.py is run by benchmarks/run.py (or with --worker by it)")
