"""Logging: the ``baldur`` logger only, stable event names, text or JSON lines, floods folded.

pytest's logging plugin puts handlers on the root logger during each test, so
the tests that need "nothing configured" either run a fresh interpreter or
take those handlers off for the duration of the block (``bare_logging``).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import baldur
from baldur import _log, _runtime
from baldur.policies.breaker import Breaker
from baldur.stores.memory import MemoryStore

REPO = Path(__file__).resolve().parents[1]
OPENS_AT_ONCE = Breaker(failure_rate=None, consecutive_failures=1, open_for=5.0, half_open_calls=1)


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def fresh_log_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No folding memory from other tests; the runtime and the ``baldur`` level are put back."""
    monkeypatch.setattr(_log, "_folds", {})
    monkeypatch.setattr(_log, "_our_level", _log._our_level)  # Baldur's own level, told apart from the app's
    monkeypatch.setattr(_runtime, "_current", _runtime._current)
    logger = logging.getLogger("baldur")
    level = logger.level
    yield
    logger.setLevel(level)  # setLevel, not an attribute: the loggers' caches must be cleared


@contextmanager
def bare_logging() -> Iterator[None]:
    """Inside the block no handler is configured anywhere (as in a fresh app); restored after."""
    root, logger = logging.getLogger(), logging.getLogger("baldur")
    saved_root, saved_own, saved_handler = root.handlers[:], logger.handlers[:], _log._own_handler
    for handler in saved_root:
        root.removeHandler(handler)
    for handler in saved_own:
        logger.removeHandler(handler)
    _log._own_handler = None
    try:
        yield
    finally:
        for handler in logger.handlers[:]:
            logger.removeHandler(handler)
        for handler in saved_own:
            logger.addHandler(handler)
        for handler in saved_root:
            root.addHandler(handler)
        _log._own_handler = saved_handler


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter, with no BALDUR_* variable but those given."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BALDUR_")}
    clean.update(env)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=clean, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done


def trip(name: str) -> None:
    """Open the breaker ``name`` with one failure."""
    @baldur.protected(name, breaker=OPENS_AT_ONCE)
    def down() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        down()


# -- handlers ---------------------------------------------------------------------------------

FRESH_APP = r"""
import json, logging, sys
basic_config_calls = []
logging.basicConfig = lambda *a, **k: basic_config_calls.append(1)
import baldur
after_import = len(logging.getLogger("baldur").handlers)
baldur.init()
baldur.init(log_level="INFO")

@baldur.protected("fresh", breaker=baldur.Breaker(failure_rate=None, consecutive_failures=1))
def down():
    raise ConnectionError("down")

try:
    down()
except ConnectionError:
    pass
handlers = logging.getLogger("baldur").handlers
json.dump({
    "basicConfig": len(basic_config_calls),
    "after_import": after_import,
    "root_handlers": len(logging.getLogger().handlers),
    "root_level": logging.getLogger().level,
    "baldur_handlers": [type(h).__name__ for h in handlers],
    "to_stdout": [getattr(h, "stream", None) is sys.stdout for h in handlers],
}, sys.stderr)
"""


def test_a_fresh_app_gets_one_stdout_handler_on_baldur_and_an_untouched_root() -> None:
    done = run_python(FRESH_APP)
    assert json.loads(done.stderr) == {
        "basicConfig": 0,
        "after_import": 0,
        "root_handlers": 0,
        "root_level": logging.WARNING,
        "baldur_handlers": ["StreamHandler"],
        "to_stdout": [True],
    }
    # init(log_level="INFO") names the store (one INFO line), then the breaker opens.
    ready, line = done.stdout.splitlines()
    assert "store.ready" in ready and "memory, per process" in ready and "shared=False" in ready
    assert "circuit.opened" in line and "name=fresh" in line and "state=open" in line


def test_an_app_with_logging_configured_gets_no_extra_handler() -> None:
    done = run_python(r"""
import json, logging, sys
logging.basicConfig(stream=sys.stdout, format="APP %(name)s %(message)s")
import baldur
baldur.init(log_level="INFO")

@baldur.protected("configured", breaker=baldur.Breaker(failure_rate=None, consecutive_failures=1))
def down():
    raise ConnectionError("down")

try:
    down()
except ConnectionError:
    pass
json.dump([len(logging.getLogger("baldur").handlers), len(logging.getLogger().handlers)], sys.stderr)
""")
    assert json.loads(done.stderr) == [0, 1]
    assert done.stdout.splitlines() == [  # once each, through the app's handler
        "APP baldur.store store.ready: Baldur's store is memory, per process",
        "APP baldur.circuit circuit.opened"]


def test_json_format_writes_one_json_document_per_line() -> None:
    done = run_python(FRESH_APP, BALDUR_LOG_FORMAT="json")
    ready, line = done.stdout.splitlines()
    assert json.loads(ready)["event"] == "store.ready" and json.loads(ready)["shared"] is False
    doc = json.loads(line)
    assert doc["event"] == "circuit.opened" and doc["name"] == "fresh" and doc["state"] == "open"
    assert doc["level"] == "INFO" and doc["logger"] == "baldur.circuit" and doc["message"] == "circuit.opened"


def test_init_in_process_adds_one_handler_to_baldur_only(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    with bare_logging():
        baldur.init(log_level="INFO")
        baldur.init(log_level="INFO", log_format="json")  # reconfigured, not a second handler
        handlers = logging.getLogger("baldur").handlers
        assert len(handlers) == 1 and isinstance(handlers[0], logging.StreamHandler)
        assert root.handlers == []
        trip("in-process")
        [line] = [line for line in capsys.readouterr().out.splitlines() if "store.ready" not in line]
        assert json.loads(line)["event"] == "circuit.opened"


# -- events ---------------------------------------------------------------------------------------

def baldur_records(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, dict[str, object]]]:
    """The events logged, without init's store.ready line (see test_init_names_the_store_once)."""
    return [(r.name, r.getMessage(), r.baldur) for r in caplog.records  # type: ignore[attr-defined]
            if r.name.startswith("baldur.") and r.baldur.get("event") != "store.ready"]  # type: ignore[attr-defined]


def test_init_names_the_store_once(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="baldur")
    monkeypatch.setattr(_runtime, "_current", None)
    baldur.init()
    baldur.init()  # the same settings: the same runtime, no second line
    ready = [r for r in caplog.records if getattr(r, "baldur", {}).get("event") == "store.ready"]
    assert [(r.levelno, r.baldur["shared"]) for r in ready] == [(logging.INFO, False)]  # type: ignore[attr-defined]
    assert "memory, per process" in ready[0].getMessage()


def test_log_level_info_from_the_environment_shows_the_circuit_events(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("BALDUR_LOG_LEVEL", "INFO")
    monkeypatch.setattr(_runtime, "_current", None)
    store = baldur.init().sync
    assert isinstance(store, MemoryStore)
    clock = Clock()
    monkeypatch.setattr(store, "clock", clock)

    @baldur.protected("events", breaker=OPENS_AT_ONCE)
    def call(fail: bool) -> str:
        if fail:
            raise ConnectionError("down")
        return "ok"

    with pytest.raises(ConnectionError):
        call(True)
    clock.now += 5.0
    assert call(False) == "ok"
    assert baldur_records(caplog) == [
        ("baldur.circuit", "circuit.opened", {"event": "circuit.opened", "name": "events", "state": "open"}),
        ("baldur.circuit", "circuit.half_open",
         {"event": "circuit.half_open", "name": "events", "state": "half_open"}),
        ("baldur.circuit", "circuit.closed", {"event": "circuit.closed", "name": "events", "state": "closed"}),
    ]
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name.startswith("baldur."))


def test_rejections_have_their_events(caplog: pytest.LogCaptureFixture) -> None:
    baldur.init(log_level="INFO")

    @baldur.protected("limited", rate_limit="1/hour")
    def limited() -> None:
        return None

    @baldur.protected("busy", max_concurrency=1)
    def busy() -> None:
        with pytest.raises(baldur.Overloaded):
            busy()

    limited()
    with pytest.raises(baldur.RateLimited):
        limited()
    busy()
    events = [(name, message, fields["name"]) for name, message, fields in baldur_records(caplog)]
    assert events == [("baldur.ratelimit", "ratelimit.blocked", "limited"),
                      ("baldur.backpressure", "backpressure.shed", "busy")]


def test_the_default_level_hides_the_info_events(caplog: pytest.LogCaptureFixture) -> None:
    assert baldur.init().settings.log_level == "WARNING"
    trip("quiet")
    assert baldur_records(caplog) == []


def test_every_event_name_is_stable_and_has_its_logger() -> None:
    assert set(_log.EVENTS) >= {
        "circuit.opened", "circuit.half_open", "circuit.closed", "ratelimit.blocked", "backpressure.shed",
        "store.degraded", "store.recovered", "idempotency.replayed", "idempotency.conflict",
    }
    assert all(logger.startswith("baldur.") for logger in _log.EVENTS.values())


# -- floods -------------------------------------------------------------------------------------

def test_a_flood_prints_one_line_then_one_with_the_folded_count(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """1 000 identical events print one line; the next line for that event and key says how many
    were folded. The window is 1 s; here it is widened while flooding, so that a slow machine
    cannot split the flood, and then closed, as if the second had passed."""
    assert _log._FOLD_SECONDS == 1.0
    with bare_logging():
        baldur.init(log_level="INFO")

        @baldur.protected("flood", rate_limit="1/hour")
        def call() -> None:
            return None

        @baldur.protected("other", rate_limit="1/hour")
        def other() -> None:
            return None

        call()
        other()
        monkeypatch.setattr(_log, "_FOLD_SECONDS", 3_600.0)
        for _ in range(1_000):
            with pytest.raises(baldur.RateLimited):
                call()
        with pytest.raises(baldur.RateLimited):
            other()  # another key is not folded into the flood
        lines = [line for line in capsys.readouterr().out.splitlines() if "store.ready" not in line]
        assert len(lines) == 2
        assert "ratelimit.blocked" in lines[0] and "name=flood" in lines[0] and "folded" not in lines[0]
        assert "name=other" in lines[1]

        monkeypatch.setattr(_log, "_FOLD_SECONDS", 0.0)
        with pytest.raises(baldur.RateLimited):
            call()
        [line] = capsys.readouterr().out.splitlines()
        assert "name=flood" in line and "folded=999" in line
        with pytest.raises(baldur.RateLimited):
            call()
        [line] = capsys.readouterr().out.splitlines()
        assert "folded" not in line  # the count starts again


def test_a_level_the_app_set_on_the_baldur_logger_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    logging.getLogger("baldur").setLevel(logging.DEBUG)
    monkeypatch.setattr(_runtime, "_current", None)
    baldur.init(log_level="ERROR")
    assert logging.getLogger("baldur").level == logging.DEBUG


def test_forcing_a_breaker_logs_like_the_automatic_transitions(caplog: pytest.LogCaptureFixture) -> None:
    baldur.init(log_level="INFO")
    for force in ("open", "close", "reset"):
        getattr(baldur.breaker(f"forced-{force}"), force)()
    assert baldur_records(caplog) == [
        ("baldur.circuit", "circuit.opened",
         {"event": "circuit.opened", "name": "forced-open", "state": "forced_open", "forced": True}),
        ("baldur.circuit", "circuit.closed",
         {"event": "circuit.closed", "name": "forced-close", "state": "forced_closed", "forced": True}),
        ("baldur.circuit", "circuit.closed",
         {"event": "circuit.closed", "name": "forced-reset", "state": "closed", "forced": True}),
    ]


def test_the_web_limit_is_logged_under_the_clients_key(caplog: pytest.LogCaptureFixture) -> None:
    """The per-client limit of the web hooks names the client, on a protected view as on a plain one
    (the key the Redis store's admit script names too)."""
    from flask import Flask

    from baldur.adapters.flask import init_flask

    baldur.init(log_level="INFO")
    app = Flask(__name__)
    init_flask(app, rate_limit="1/minute")
    app.add_url_rule("/protected", "protected", baldur.protected("logged-view")(lambda: "ok"))
    app.add_url_rule("/plain", "plain", lambda: "ok")
    for path, address in (("/protected", "192.0.2.7"), ("/plain", "192.0.2.8")):
        statuses = [app.test_client().get(path, environ_base={"REMOTE_ADDR": address}).status_code
                    for _ in range(2)]
        assert statuses == [200, 429]
    names = [fields["name"] for _, message, fields in baldur_records(caplog) if message == "ratelimit.blocked"]
    assert names == ["web:192.0.2.7", "web:192.0.2.8"]


def test_an_idempotency_conflict_logs_the_retry_after_the_caller_is_told(caplog: pytest.LogCaptureFixture) -> None:
    baldur.init(log_level="INFO")
    told: list[float] = []

    @baldur.protected("conflicted", idempotency_key="key")
    def call(key: str) -> str:
        with pytest.raises(baldur.IdempotencyConflict) as caught:
            call(key)  # the same key while the first call runs
        told.append(caught.value.retry_after)
        return "done"

    assert call("k-1") == "done"
    [conflict] = [fields for _, message, fields in baldur_records(caplog) if message == "idempotency.conflict"]
    assert told == [conflict["retry_after"]] == [1.0]
