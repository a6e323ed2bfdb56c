"""The ``baldur`` console script: run the admin server, or talk to its API.

``baldur admin`` serves the admin API and Web Console (``baldur.admin.serve``).
``baldur status`` prints the breakers and limits; ``baldur breaker open|close|reset
NAME --reason TEXT [--for 10m]`` steers one breaker. They call the API at
``--url`` with the key in ``BALDUR_ADMIN_KEY`` or ``--key-file``, over the
standard library's HTTP client only, so the CLI needs no extra.

Each failure is one line on stderr and an exit code of its own (``EXIT_CODES``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any, NoReturn

__all__ = ["EXIT_CODES", "main", "parse_duration"]

DEFAULT_URL = "http://127.0.0.1:9180"
KEY_ENV = "BALDUR_ADMIN_KEY"
#: Why the CLI stopped → its exit code (2 is also argparse's, for a malformed command line).
EXIT_CODES = {
    "ok": 0,
    "error": 1,
    "usage": 2,
    "unreachable": 3,
    "unauthorized": 4,
    "forbidden": 5,
    "not_found": 6,
    "bad_request": 7,
    "too_many_attempts": 8,
}
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
#: The API's bound on ``for_seconds`` (7 days).
MAX_SECONDS = 604_800


class Failure(Exception):
    """A reason to stop: printed as one line, exiting with ``EXIT_CODES[kind]``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def parse_duration(text: str) -> float:
    """``30s``, ``10m``, ``2h``, ``1d`` or plain seconds (``90``) → seconds; ``ValueError`` otherwise."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"--for {text!r} is not a duration; for example: --for 30s, --for 10m, --for 2h")
    seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if not 1 <= seconds <= MAX_SECONDS:
        raise ValueError(f"--for {text!r} is {seconds:g} s; a forced state lasts from 1 s to 7d (604800 s)")
    return seconds


# -- the API client -------------------------------------------------------------

class Client:
    """The admin API at ``url`` with a bearer ``key``: JSON in, JSON out, failures as ``Failure``."""

    def __init__(self, url: str, key: str, timeout: float) -> None:
        self.url = url.rstrip("/")
        self.key = key
        self.timeout = timeout
        # The admin API is reached directly: a proxy from the environment must not see the key.
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get(self, path: str) -> Any:
        return self._call("GET", path, None)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self._call("POST", path, json.dumps(body).encode())

    def _call(self, method: str, path: str, body: bytes | None) -> Any:
        headers = {"Authorization": f"Bearer {self.key}", "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with self.opener.open(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise _http_failure(exc, self.url) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise Failure("unreachable", f"cannot reach the admin API at {self.url} ({reason}); is `baldur admin` "
                                         f"running there? (--url to name another)") from None
        except ValueError:
            raise Failure("error", f"the admin API at {self.url} answered {method} {path} with something "
                                   f"that is not JSON") from None


def _http_failure(exc: urllib.error.HTTPError, url: str) -> Failure:
    try:
        problem = json.loads(exc.read() or b"{}")
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        problem = {}
    detail = problem.get("detail") or problem.get("title") or exc.reason
    status = exc.code
    if status == 401:
        return Failure("unauthorized", f"the admin API refused the key (401): check {KEY_ENV} or --key-file")
    if status == 403:
        return Failure("forbidden", f"not allowed (403): {detail}")
    if status == 404:
        return Failure("not_found", f"not found (404): {detail}")
    if status == 400:
        field = problem.get("field")
        return Failure("bad_request", f"the admin API rejected the request (400): {detail}"
                                      + (f" [field: {field}]" if field else ""))
    if status == 429:
        wait = exc.headers.get("Retry-After")
        return Failure("too_many_attempts", "too many failed attempts from this address (429)"
                                            + (f"; retry after {wait} s" if wait else ""))
    return Failure("error", f"the admin API at {url} answered {status}: {detail}")


def _key(args: argparse.Namespace) -> str:
    if args.key_file is not None:
        try:
            with open(args.key_file, encoding="utf-8") as file:
                key = file.read().strip()
        except OSError as exc:
            raise Failure("usage", f"cannot read --key-file {args.key_file!r}: {exc.strerror}") from None
        if not key:
            raise Failure("usage", f"--key-file {args.key_file!r} is empty")
        return key
    key = os.environ.get(KEY_ENV, "").strip()
    if not key:
        raise Failure("usage", f"no admin key: set {KEY_ENV} or pass --key-file PATH")
    return key


# -- the commands ----------------------------------------------------------------

def _admin(args: argparse.Namespace) -> int:
    try:
        from baldur.admin import serve  # type: ignore[attr-defined,unused-ignore]
    except ImportError as exc:
        raise Failure("error", f"`baldur admin` needs the admin extra ({exc}): pip install -e '.[admin]' "
                               f"in a checkout of Baldur") from None
    return int(serve(args.addr))


def _status(args: argparse.Namespace) -> int:
    client = Client(args.url, _key(args), args.timeout)
    breakers = client.get("/api/v1/breakers")["breakers"]
    limits = client.get("/api/v1/limits")["limits"]
    now = time.time()
    print("BREAKERS")
    print(_table(["NAME", "STATE", "FAILURE RATE", "CALLS", "FAILURES", "OPEN FOR", "FORCED"],
                 [_breaker_row(breaker, now) for breaker in breakers]) if breakers else "  (none)")
    print()
    print("LIMITS")
    print(_table(["NAME", "RATE LIMIT", "MAX CONCURRENCY", "IN FLIGHT"],
                 [[limit["name"], limit.get("rate_limit") or "-",
                   "-" if limit.get("max_concurrency") is None else str(limit["max_concurrency"]),
                   str(limit.get("in_flight", 0))] for limit in limits]) if limits else "  (none)")
    return 0


def _breaker(args: argparse.Namespace) -> int:
    client = Client(args.url, _key(args), args.timeout)
    body: dict[str, Any] = {"reason": args.reason}
    if args.for_seconds is not None:
        body["for_seconds"] = args.for_seconds
    breaker = client.post(f"/api/v1/breakers/{urllib.parse.quote(args.name, safe='')}/{args.action}", body)
    print(_describe(breaker, time.time()))
    return 0


def _describe(breaker: dict[str, Any], now: float) -> str:
    forced = breaker.get("forced")
    text = f"{breaker['name']}: {breaker['state'].replace('_', '-')}"
    if forced:
        until = forced.get("until")
        text += f", forced {forced['state']}" + (f" for {_span(until - now)} more" if until else " until reset")
        text += f" ({forced.get('reason', '')}; by {forced.get('by', '?')})"
    return text


def _breaker_row(breaker: dict[str, Any], now: float) -> list[str]:
    rate = breaker.get("failure_rate")
    open_until = breaker.get("open_until")
    forced = breaker.get("forced")
    forced_text = "-"
    if forced:
        until = forced.get("until")
        lapses = f" {_span(until - now)}" if until else ""
        forced_text = f"{forced['state']}{lapses}: {forced.get('reason', '')}"
    return [breaker["name"], breaker["state"].replace("_", "-"), "-" if rate is None else f"{rate:.0%}",
            str(breaker.get("calls", 0)), str(breaker.get("failures", 0)),
            _span(open_until - now) if open_until else "-", forced_text]


def _span(seconds: float) -> str:
    """``4m10s``-style, rounded up to the second."""
    whole = max(0, math.ceil(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _table(header: list[str], rows: list[list[str]]) -> str:
    cells = [header, *[[_printable(cell) for cell in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in cells)


def _printable(text: str) -> str:
    """A user-chosen name or reason on one line, control characters shown escaped."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


# -- the command line ------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_CODES["usage"], f"{self.prog}: {message}\n")


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _reason(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("--reason must say why (it is audited)")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="baldur", description="Baldur's admin server and command-line client.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    client_options = _Parser(add_help=False)
    client_options.add_argument("--url", default=DEFAULT_URL, help=f"the admin API (default {DEFAULT_URL})")
    client_options.add_argument("--key-file", metavar="PATH",
                                help=f"read the admin key from this file (default: ${KEY_ENV})")
    client_options.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for an answer")

    admin = commands.add_parser("admin", help="serve the admin API and Web Console (BALDUR_ADMIN_ADDR)")
    admin.add_argument("--addr", help="host:port to listen on (default: BALDUR_ADMIN_ADDR or 127.0.0.1:9180)")
    admin.set_defaults(run=_admin)

    status = commands.add_parser("status", parents=[client_options], help="print the breakers and limits")
    status.set_defaults(run=_status)

    breaker = commands.add_parser("breaker", help="force a breaker open or closed, or reset it")
    actions = breaker.add_subparsers(dest="action", required=True, parser_class=_Parser)
    for action, summary in (("open", "force it open (every call is refused)"),
                            ("close", "force it closed (every call runs)"),
                            ("reset", "back to its own rule: closed, counts cleared")):
        sub = actions.add_parser(action, parents=[client_options], help=summary)
        sub.add_argument("name", help="the breaker's name")
        sub.add_argument("--reason", required=True, type=_reason, help="why (audited)")
        if action != "reset":
            sub.add_argument("--for", dest="for_seconds", type=_duration, metavar="DURATION",
                             help="lapse by itself after 30s, 10m, 2h, 1d (default: until reset)")
        sub.set_defaults(run=_breaker, for_seconds=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except Failure as failure:
        print(f"baldur: {failure}", file=sys.stderr)
        return EXIT_CODES[failure.kind]
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
