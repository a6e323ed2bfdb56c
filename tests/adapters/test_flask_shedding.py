"""Priorities under load shedding: a critical view keeps running while a sheddable one is shed.

Counts, not timings: requests arrive as if they had queued 2 s (a standing
queue, under the 10 s ceiling) until the controller declares overload; from
then on every sheddable one is refused and no critical one ever is.
"""

from __future__ import annotations

import threading
import time

import pytest
from _flask_support import DEADLINE, KINDS, add_view, new_app

import baldur
from baldur.adapters.flask import _InFlight, init_flask
from baldur.errors import ConfigError
from baldur.policies.shedding import Priority


def _stamp(ago: float) -> dict[str, str]:
    return {"X-Request-Start": f"t={int((time.time() - ago) * 1000)}"}


@pytest.mark.parametrize("kind", KINDS)
def test_critical_runs_and_sheddable_is_shed_under_a_standing_queue(kind: str) -> None:
    app = new_app()
    init_flask(app)
    add_view(app, "/pay", kind, lambda: "paid", protect=baldur.protected("pay", priority="critical"))
    add_view(app, "/suggest", kind, lambda: "maybe", protect=baldur.protected("suggest", priority="sheddable"))
    client = app.test_client()
    assert client.get("/suggest", headers=_stamp(0)).status_code == 200  # the delay floor
    critical: list[int] = []
    sheddable: list[int] = []
    end = time.monotonic() + DEADLINE
    while sheddable.count(503) < 5 and time.monotonic() < end:
        critical.append(client.get("/pay", headers=_stamp(2.0)).status_code)
        sheddable.append(client.get("/suggest", headers=_stamp(2.0)).status_code)
    assert sheddable.count(503) == 5
    assert critical.count(200) == len(critical)
    shed = client.get("/suggest", headers=_stamp(2.0))
    assert shed.status_code == 503 and int(shed.headers["Retry-After"]) >= 1


def test_a_request_past_the_ceiling_is_shed_even_when_critical() -> None:
    app = new_app()
    init_flask(app)
    add_view(app, "/health", "sync", lambda: "ok", protect=baldur.protected("health", priority="critical"))
    client = app.test_client()
    assert client.get("/health", headers=_stamp(30.0)).status_code == 503
    assert client.get("/health", headers=_stamp(0.5)).status_code == 200


def test_an_unknown_priority_is_a_config_error_naming_the_view() -> None:
    with pytest.raises(ConfigError, match=r"protected\('x', priority=\.\.\.\)='urgent' .*priority=\"critical\""):
        baldur.protected("x", priority="urgent")


@pytest.mark.parametrize("ceiling", [None, 3])
def test_the_in_flight_count_is_exact_across_threads(ceiling: int | None) -> None:
    """Many threads entering and leaving at once: the count comes back to zero, and an
    explicit ceiling is never passed (the adaptive limit alone takes no lock)."""
    in_flight = _InFlight(ceiling)
    most = 0
    guard = threading.Lock()

    def worker() -> None:
        nonlocal most
        for _ in range(2000):
            request = object()
            if in_flight.enter(request, Priority.NORMAL):
                with guard:
                    most = max(most, len(in_flight.running))
                in_flight.leave(request, time.monotonic() - 0.001)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert in_flight.running == set()
    assert most >= 1
    if ceiling is not None:
        assert most <= ceiling
