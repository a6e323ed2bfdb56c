"""Runs the code blocks of README.md and docs/ as a newcomer would: on a fresh copy of the checkout.

Sybil (a maintained documentation tester) finds the blocks, keeps one namespace per page and honours
``<!-- skip: next "reason" -->``; this module supplies the evaluators for the shell blocks:

- ``bash``: run from the checkout's root with ``bash -e``; it must exit 0. When its last command starts a
  server (``flask ... run``, ``python manage.py runserver``, ``gunicorn``, ``redis-server``) the block
  runs in the background as the page's server, and the next block waits until the server's port accepts connections.
- ``console``: ``$ command`` lines, each followed by the output it must print. A command ending in ``&``
  runs in the background, and the next command waits until the page's web server is inside a view.
- ``log``: lines the page's web server must have printed since the previous ``log`` block, in order.
- ``python``: executed in the page's namespace; a block whose first line is ``# name.py`` is also
  saved as that file in the checkout, for the commands after it.

Outputs are compared after ``normalise``: times, dates, versions and durations become placeholders.
The ports the docs show (5000 for the web server, 6379 for Redis, 6390 for a Redis that is not there)
stand for free ports chosen per page.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sybil import Example, Sybil
from sybil.evaluators.python import PythonEvaluator
from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser, SkipParser

from tests.ports import free_ports

ROOT = Path(__file__).resolve().parents[1]
#: The install every page after the README assumes (the README's first command, which a test keeps equal).
INSTALL = "python3 -m venv .venv && .venv/bin/pip install -e '.[flask]'"
#: The last command of a ``bash`` block that keeps running (the page's server): its program, after any
#: ``NAME=value`` assignments, is one of these.
_SERVER = re.compile(r"^(?:\w+=\S*\s+)*\S*?\b(flask\s.*\brun|python\s+manage\.py\s.*\brunserver|gunicorn|redis-server)"
                     r"(\s|$)")
#: The ports the docs show, by role.
DOC_PORTS = {"web": 5000, "redis": 6379, "absent": 6390}
_DOC_PORT_IN_COMMAND = re.compile(r"(?<=[: ])(5000|6379|6390)\b")
_SAVED_AS = re.compile(r"\A# (\S+\.py)\n")
#: How long a command may take (an install downloads), and a server may take to listen.
COMMAND_SECONDS = 600.0
SERVER_SECONDS = 300.0

_PLACEHOLDERS = (
    (re.compile(r"\r\n"), "\n"),
    (re.compile(r"^Date: .*$", re.M), "Date: <date>"),
    (re.compile(r"Werkzeug/\S+ Python/\S+"), "Werkzeug/<version> Python/<version>"),
    (re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", re.M), "<time> "),
    (re.compile(r"\b(retry_after|lease_left)=[\d.]+"), r"\1=<seconds>"),
    (re.compile(r"^Retry-After: \d+$", re.M), "Retry-After: <seconds>"),
    (re.compile(r'"retry-after": \d+'), '"retry-after": <seconds>'),
    (re.compile(r";t=\d+"), ";t=<seconds>"),
    (re.compile(r"^Content-Length: \d+$", re.M), "Content-Length: <length>"),
    (re.compile(r" in [\d.]+s\b"), " in <seconds>s"),
)


def normalise(text: str) -> str:
    """Times, dates, versions and lengths that depend on the run become placeholders."""
    for pattern, replacement in _PLACEHOLDERS:
        text = pattern.sub(replacement, text)
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())


def fresh_checkout(destination: Path) -> Path:
    """The files a clone of this checkout would have (tracked, plus new files not ignored): no .venv."""
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


class Server:
    """A server a page started: its process group, its output, what the page has read of it."""

    def __init__(self, role: str, process: subprocess.Popen[bytes], output: Path) -> None:
        self.role = role
        self.process = process
        self.output = output
        self.read_up_to = 0

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def session_pids(self) -> list[int]:
        """Every process of the server's session (the block's bash, the server, its workers)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rpartition(")")[2].split()
                except OSError:
                    continue
                if int(fields[3]) == self.process.pid:  # field 6 of stat, the session id
                    pids.append(int(entry.name))
        return pids

    def inside_a_view(self) -> bool:
        """A thread of the server sleeps in ``time.sleep``: the slow view of the example is running."""
        for pid in self.session_pids():
            for task in Path(f"/proc/{pid}/task").glob("*"):
                try:
                    if (task / "wchan").read_text() == "hrtimer_nanosleep":
                        return True
                except OSError:
                    continue
        return False


class PageRun:
    """The state of one page's run: the checkout, its ports, the servers it started."""

    def __init__(self, page: str, checkout: Path, scratch: Path) -> None:
        self.page = page
        self.checkout = checkout
        self.scratch = scratch
        self.ports = dict(zip(DOC_PORTS, free_ports(len(DOC_PORTS)), strict=True))
        self.servers: dict[str, Server] = {}
        self.background: list[subprocess.Popen[bytes]] = []
        self.env = self._environment()

    def _environment(self) -> dict[str, str]:
        """A newcomer's shell: no BALDUR_* variable, no virtual environment active, the web port free."""
        own_bin = str(Path(sys.prefix) / "bin")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("BALDUR_", "PYTEST_", "VIRTUAL_ENV", "PYTHONPATH"))}
        env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != own_bin)
        env["FLASK_RUN_PORT"] = str(self.ports["web"])
        env["PYTHONUNBUFFERED"] = "1"  # a terminal shows each line when it is printed
        env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        return env

    # -- ports ------------------------------------------------------------------------------------

    def command(self, text: str) -> str:
        by_doc_port = {str(DOC_PORTS[role]): str(port) for role, port in self.ports.items()}
        return _DOC_PORT_IN_COMMAND.sub(lambda m: by_doc_port[m.group(1)], text)

    def as_shown(self, output: str) -> str:
        for role, port in self.ports.items():
            output = re.sub(rf"\b{port}\b", str(DOC_PORTS[role]), output)
        return output

    # -- running ----------------------------------------------------------------------------------

    def ensure_installed(self) -> None:
        if not (self.checkout / ".venv" / "bin" / "flask").exists():
            self.run(INSTALL)

    def run(self, script: str, timeout: float = COMMAND_SECONDS) -> str:
        """Run ``script`` in the foreground; its standard output. (Its stderr is not compared: curl, for
        one, prints a progress meter there when its output is not a terminal.)"""
        done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", self.command(script)], cwd=self.checkout,
                              env=self.env, capture_output=True, timeout=timeout, check=False)
        output = done.stdout.decode(errors="replace")
        if done.returncode != 0:
            raise AssertionError(f"{self.page}: `{script}` exited with {done.returncode}:\n{output}\n"
                                 f"{done.stderr.decode(errors='replace')}{self.servers_output()}")
        return output

    def servers_output(self) -> str:
        """What the page's servers printed, for a failure's message: a command may fail because of them."""
        return "".join(f"\n--- the {role} server printed ---\n{server.text()[-4000:]}"
                       for role, server in self.servers.items())

    def start_server(self, script: str, program: str) -> None:
        role = "redis" if program == "redis-server" else "web"
        previous = self.servers.pop(role, None)
        if previous is not None:
            previous.stop()  # the reader stops it with Ctrl+C before starting the next
        output = self.scratch / f"{role}-{time.monotonic_ns()}.log"
        with output.open("wb") as sink:
            process = subprocess.Popen(["bash", "-e", "-c", self.command(script)], cwd=self.checkout,
                                       env=self.env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        server = Server(role, process, output)
        self.servers[role] = server
        deadline = time.monotonic() + SERVER_SECONDS
        while not _accepts(self.ports[role]):
            if process.poll() is not None:
                raise AssertionError(f"{self.page}: the server of `{script}` exited with {process.returncode}:\n"
                                     f"{server.text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.page}: `{script}` did not listen within {SERVER_SECONDS} s:\n"
                                     f"{server.text()}")
            time.sleep(0.05)  # polling for readiness, not waiting for it to happen by itself

    def start_background(self, command: str) -> None:
        web = self.servers.get("web")
        if web is None:
            raise AssertionError(f"{self.page}: `{command} &` needs a running web server")
        self.background.append(subprocess.Popen(["bash", "-c", self.command(command)], cwd=self.checkout,
                                                env=self.env, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL, start_new_session=True))
        deadline = time.monotonic() + 60
        while not web.inside_a_view():
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.page}: `{command} &` never reached the view")
            time.sleep(0.01)

    def wait_for_background(self) -> None:
        while self.background:
            process = self.background.pop()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise AssertionError(f"{self.page}: a background command did not finish within 60 s") from None

    def new_log(self) -> str:
        web = self.servers.get("web")
        if web is None:
            raise AssertionError(f"{self.page}: a log block needs a running web server")
        text = web.text()
        fresh, web.read_up_to = text[web.read_up_to:], len(text)
        return fresh

    def stop(self) -> None:
        for process in self.background:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for server in self.servers.values():
            server.stop()


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# -- the evaluators ------------------------------------------------------------------------------

def _page(example: Example) -> PageRun:
    run: PageRun = example.namespace["page_run"]
    return run


def _mismatch(example: Example, command: str, expected: str, actual: str) -> str:
    return (f"{example.path}:{example.line}: `{command}` printed\n{actual}\n--- but the page shows ---\n{expected}")


def evaluate_bash(example: Example) -> str | None:
    run = _page(example)
    run.ensure_installed()
    script = str(example.parsed).strip("\n")
    last_line = script.splitlines()[-1]
    last_command = last_line.rpartition(" && ")[2]
    server = _SERVER.match(last_command)
    if server is not None:
        run.start_server(script, server.group(1))
    else:
        run.run(script)
    return None


def console_commands(source: str) -> Iterator[tuple[str, str]]:
    """``(command, expected output)`` for each ``$ `` line (continued by a trailing backslash)."""
    lines = source.strip("\n").splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("$ "):
            raise ValueError(f"a console block starts each command with '$ ': {lines[i]!r}")
        command = lines[i][2:]
        while command.endswith("\\"):
            i += 1
            command = command + "\n" + lines[i]
        i += 1
        output: list[str] = []
        while i < len(lines) and not lines[i].startswith("$ "):
            output.append(lines[i])
            i += 1
        yield command, "\n".join(output)


def evaluate_console(example: Example) -> str | None:
    run = _page(example)
    run.ensure_installed()
    try:
        for command, expected in console_commands(str(example.parsed)):
            if command.rstrip().endswith("&"):
                run.start_background(command.rstrip()[:-1])
                continue
            actual = run.as_shown(run.run(command))
            if normalise(actual) != normalise(expected):
                return _mismatch(example, command, normalise(expected), normalise(actual))
    finally:
        run.wait_for_background()
    return None


def evaluate_log(example: Example) -> str | None:
    run = _page(example)
    printed = normalise(run.as_shown(run.new_log())).splitlines()
    position = 0
    for line in normalise(str(example.parsed)).splitlines():
        try:
            position = printed.index(line, position) + 1
        except ValueError:
            return _mismatch(example, "the server", line, "\n".join(printed))
    return None


class _PythonBlock:
    """Runs a Python block in the page's namespace; ``# name.py`` on its first line also saves it."""

    def __init__(self) -> None:
        self.python = PythonEvaluator()

    def __call__(self, example: Example) -> Any:
        saved_as = _SAVED_AS.match(str(example.parsed))
        if saved_as is not None:
            (_page(example).checkout / saved_as.group(1)).write_text(str(example.parsed))
        return self.python(example)


def page_sybil() -> Sybil:
    python = PythonCodeBlockParser()
    python.codeblock_parser = CodeBlockParser("python", _PythonBlock())
    return Sybil(parsers=[
        SkipParser(),
        python,
        CodeBlockParser("bash", evaluate_bash),
        CodeBlockParser("console", evaluate_console),
        CodeBlockParser("log", evaluate_log),
    ])
