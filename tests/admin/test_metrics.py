"""``/metrics`` on the memory store: every figure equals the calls made, read through Prometheus's parser.

The meters live for the process, so each test counts under names of its own.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator

import anyio
import pytest
from _scrape import Scrape, expected, scrape

import baldur
from baldur import _runtime
from baldur.adapters.flask import init_flask
from baldur.admin._metrics import escape_label, render_metrics
from baldur.bridges import AsyncOverSync
from baldur.errors import CallTimeout, CircuitOpen, Overloaded, RateLimited
from baldur.policies.breaker import Breaker
from baldur.stores.memory import MemoryStore
from tests.adapters._flask_support import add_view, new_app


class Boom(Exception):
    pass


def unique(base: str) -> str:
    return f"{base}-{uuid.uuid4().hex[:8]}"


def test_calls_and_failures_equal_the_calls_made() -> None:
    name = unique("orders")

    @baldur.protected(name)
    def place(fail: bool) -> str:
        if fail:
            raise Boom
        return "placed"

    for fail in [False] * 7 + [True] * 3 + [False] * 2:
        with contextlib.suppress(Boom):
            place(fail)
    assert scrape().figures(name) == expected(calls=12, failures=3)


def test_the_exposition_declares_its_families_and_types() -> None:
    name = unique("typed")
    baldur.protected(name)(lambda: None)()
    text = scrape()
    assert text.types == {"baldur_calls": "counter", "baldur_failures": "counter", "baldur_rejections": "counter",
                          "baldur_breaker_state": "gauge", "baldur_in_flight": "gauge"}
    assert "# HELP baldur_calls_total " in text.text and "# TYPE baldur_in_flight gauge" in text.text


@pytest.mark.parametrize("awkward", ['say "hi"', "back\\slash", "new\nline", 'all "\\\n" at once'])
def test_a_user_chosen_name_is_escaped_and_reads_back_unchanged(awkward: str) -> None:
    name = f"{awkward} {uuid.uuid4().hex[:8]}"
    protected = baldur.protected(name)(lambda: None)
    protected()
    protected()
    parsed = scrape()
    assert parsed.value("baldur_calls_total", name) == 2
    assert f'baldur_calls_total{{name="{escape_label(name)}"}} 2' in parsed.text
    assert "\n" not in escape_label(name)


def test_an_open_breaker_counts_its_rejections_and_reads_2() -> None:
    name = unique("payments")

    @baldur.protected(name, breaker=Breaker(consecutive_failures=2, failure_rate=None))
    def pay() -> None:
        raise Boom

    for _ in range(2):
        with pytest.raises(Boom):
            pay()
    for _ in range(3):
        with pytest.raises(CircuitOpen):
            pay()
    assert scrape().figures(name) == expected(calls=2, failures=2, circuit_open=3, breaker_state=2)


def test_a_forced_breaker_reads_as_the_state_it_forces() -> None:
    name = unique("forced")
    baldur.protected(name)(lambda: None)()
    baldur.breaker(name).open()
    assert scrape().value("baldur_breaker_state", name) == 2
    baldur.breaker(name).close()
    assert scrape().value("baldur_breaker_state", name) == 0


@pytest.fixture
def clock() -> Iterator[list[float]]:
    """A runtime on a memory store whose clock the test moves (``clock[0]``), restored after."""
    now = [1000.0]
    store = MemoryStore(clock=lambda: now[0])
    saved = _runtime.current()
    runtime = _runtime.Runtime(saved.settings, store, AsyncOverSync(store), saved.default_breaker, False)
    with _runtime._lock:
        _runtime._current = runtime
    try:
        yield now
    finally:
        with _runtime._lock:
            _runtime._current = saved


def test_a_trial_call_reads_half_open_and_in_flight_while_it_runs(clock: list[float]) -> None:
    name = unique("trial")
    during: list[Scrape] = []

    @baldur.protected(name, breaker=Breaker(consecutive_failures=1, failure_rate=None, open_for=10))
    def call(fail: bool) -> None:
        if fail:
            raise Boom
        during.append(scrape())

    with pytest.raises(Boom):
        call(True)
    assert scrape().figures(name) == expected(calls=1, failures=1, breaker_state=2)
    clock[0] += 11
    call(False)
    assert during[0].figures(name) == expected(calls=1, failures=1, in_flight=1, breaker_state=1)
    assert scrape().figures(name) == expected(calls=2, failures=1, breaker_state=1)


def test_rate_limited_calls_are_counted_as_rejections() -> None:
    name = unique("search")
    search = baldur.protected(name, rate_limit="2/hour")(lambda: "found")
    refused = 0
    for _ in range(5):
        try:
            search()
        except RateLimited:
            refused += 1
    assert refused == 3
    assert scrape().figures(name) == expected(calls=2, rate_limited=3)


def test_a_call_over_the_concurrency_limit_is_counted_and_in_flight_shows_the_one_running() -> None:
    name = unique("export")
    seen: list[Scrape] = []

    @baldur.protected(name, max_concurrency=1)
    def export(nested: bool) -> None:
        if nested:
            seen.append(scrape())
            with pytest.raises(Overloaded):
                export(False)

    export(True)
    assert seen[0].figures(name) == expected(in_flight=1)
    assert scrape().figures(name) == expected(calls=1, concurrency=1)


def test_a_sync_block_past_its_deadline_counts_as_a_timeout_and_a_failure() -> None:
    name = unique("report")
    with pytest.raises(CallTimeout), baldur.guard(name, timeout=0.001):
        time.sleep(0.05)  # always longer than the deadline: the outcome is certain, not timed
    assert scrape().figures(name) == expected(calls=1, failures=1, timeout=1)


def test_an_async_call_cut_at_its_timeout_counts_as_a_timeout_and_a_failure() -> None:
    name = unique("fetch")

    @baldur.protected(name, timeout=0.01)
    async def fetch() -> None:
        await anyio.sleep(60)  # never finishes: the timeout always cuts it

    async def main() -> str:
        with pytest.raises(CallTimeout):
            await fetch()
        return await render_metrics(_runtime.current())

    assert Scrape(anyio.run(main)).figures(name) == expected(calls=1, failures=1, timeout=1)


def test_calls_from_many_threads_are_all_counted() -> None:
    name = unique("threads")
    work = baldur.protected(name)(lambda: None)
    threads = [threading.Thread(target=lambda: [work() for _ in range(2000)]) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert scrape().figures(name) == expected(calls=16_000)


def _stamp(ago: float) -> dict[str, str]:
    return {"X-Request-Start": f"t={int((time.time() - ago) * 1000)}"}


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_flask_views_count_their_answers(kind: str) -> None:
    ok, boom, limited = unique("ok"), unique("boom"), unique("limited")
    app = new_app()
    init_flask(app)
    add_view(app, "/ok", kind, lambda: "fine", protect=baldur.protected(ok))

    def explode() -> str:
        raise Boom

    add_view(app, "/boom", kind, explode, protect=baldur.protected(boom))
    add_view(app, "/limited", kind, lambda: "fine", protect=baldur.protected(limited, rate_limit="2/hour"))
    client = app.test_client()
    shed_before = scrape().value("baldur_rejections_total", "server", cause="shed") or 0
    statuses: dict[str, list[int]] = {"/ok": [], "/boom": [], "/limited": []}
    for path, times in (("/ok", 6), ("/boom", 3), ("/limited", 5)):
        for _ in range(times):
            statuses[path].append(client.get(path).status_code)
    assert client.get("/ok", headers=_stamp(30.0)).status_code == 503  # queued past the ceiling: shed
    assert statuses == {"/ok": [200] * 6, "/boom": [500] * 3, "/limited": [200, 200, 429, 429, 429]}
    parsed = scrape()
    assert parsed.figures(ok) == expected(calls=6)
    assert parsed.figures(boom) == expected(calls=3, failures=3)
    assert parsed.figures(limited) == expected(calls=2, rate_limited=3)
    assert parsed.value("baldur_rejections_total", "server", cause="shed") == shed_before + 1


def test_a_name_without_a_breaker_has_no_breaker_gauge() -> None:
    name = unique("plain")
    baldur.protected(name, breaker=None)(lambda: None)()
    parsed = scrape()
    assert parsed.figures(name) == expected(calls=1, breaker_state=None)

