"""The core's shape (issue 9): ``guard``'s sync face, one breaker per name, a ``Breaker``
that takes what it was not given from ``BALDUR_BREAKER_*``."""

from __future__ import annotations

import gc
import threading
import time

import anyio
import pytest

import baldur
from baldur import Breaker, CallTimeout, CircuitOpen, ConfigError, Overloaded, _runtime
from baldur.policies.breaker import State

WAIT = 10.0  # seconds: only an upper bound for waits that should end at once


def opens_on_first_failure() -> Breaker:
    return Breaker(failure_rate=None, consecutive_failures=1)


# -- guard, sync face ----------------------------------------------------------------------

def test_sync_guard_records_outcomes_and_lets_exceptions_through() -> None:
    options = Breaker(failure_rate=None, consecutive_failures=2, ignore=(ValueError,))
    with baldur.guard("sync-guard", breaker=options):
        pass
    for _ in range(3):
        with pytest.raises(ValueError), baldur.guard("sync-guard", breaker=options):
            raise ValueError("ignored")
    assert baldur.breaker("sync-guard").state is State.CLOSED
    for _ in range(2):
        with pytest.raises(ConnectionError), baldur.guard("sync-guard", breaker=options):
            raise ConnectionError("down")
    assert baldur.breaker("sync-guard").state is State.OPEN
    ran = False
    with pytest.raises(CircuitOpen) as refused, baldur.guard("sync-guard", breaker=options):
        ran = True
    assert not ran
    assert 0 < refused.value.retry_after <= 30


def test_sync_guard_timeout_is_a_deadline_that_counts_as_a_failure() -> None:
    with baldur.guard("sync-deadline", timeout=WAIT, breaker=opens_on_first_failure()):
        pass
    assert baldur.breaker("sync-deadline").state is State.CLOSED
    with pytest.raises(CallTimeout) as caught, baldur.guard("sync-deadline", timeout=0.01,
                                                               breaker=opens_on_first_failure()):
        time.sleep(0.05)  # at least the deadline's five-fold: the block ends after it, whatever the load
    assert isinstance(caught.value, TimeoutError)
    assert baldur.breaker("sync-deadline").state is State.OPEN


def test_sync_guard_late_failure_is_a_timeout_caused_by_the_error() -> None:
    with pytest.raises(CallTimeout) as caught, baldur.guard("sync-late", timeout=0.01):
        time.sleep(0.05)
        raise ConnectionError("late and down")
    assert isinstance(caught.value.__cause__, ConnectionError)


def test_one_sync_guard_object_serves_many_threads_and_nests() -> None:
    shared = baldur.guard("sync-shared", max_concurrency=4)
    inside = threading.Barrier(4, timeout=WAIT)
    errors: list[BaseException] = []

    def use() -> None:
        try:
            with shared:
                inside.wait()  # all four hold a slot at once
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=use) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert errors == []
    # Entered again within one thread: each entry holds its own slot.
    with shared, shared, pytest.raises(Overloaded), shared, shared, shared:
        pass
    with shared, shared, shared, shared:  # every slot was given back
        pass


@pytest.mark.anyio
async def test_sync_and_async_guard_share_one_breaker_by_name() -> None:
    options = opens_on_first_failure()
    with pytest.raises(ConnectionError), baldur.guard("two-faces", breaker=options):
        raise ConnectionError("down")
    with pytest.raises(CircuitOpen):
        async with baldur.guard("two-faces", breaker=options):
            await anyio.sleep(0)


# -- one breaker per name -------------------------------------------------------------------

def test_two_declarations_of_a_name_with_different_breakers_is_a_config_error() -> None:
    @baldur.protected("one-name", breaker=Breaker(open_for=10))
    def first() -> None: ...

    with pytest.raises(ConfigError) as caught:
        @baldur.protected("one-name", breaker=Breaker(open_for=20))
        def second() -> None: ...

    message = str(caught.value)
    assert "first" in message and "second" in message  # both declarations named
    assert "open_for=10.0" in message and "open_for=20.0" in message
    with pytest.raises(ConfigError, match="one-name"):
        baldur.guard("one-name")  # the default breaker is other options too
    assert first() is None


def test_declarations_that_agree_share_the_breaker() -> None:
    @baldur.protected("agreeing", breaker=Breaker(consecutive_failures=1, failure_rate=None))
    def first() -> None:
        raise ConnectionError("down")

    @baldur.protected("agreeing", breaker=Breaker(consecutive_failures=1, failure_rate=None))
    def second() -> str:
        return "never runs"

    with pytest.raises(ConnectionError):
        first()
    with pytest.raises(CircuitOpen):
        second()


def test_a_declaration_ends_with_its_function() -> None:
    @baldur.protected("short-lived", breaker=Breaker(open_for=10))
    def first() -> None: ...

    del first
    gc.collect()

    @baldur.protected("short-lived", breaker=Breaker(open_for=20))
    def second() -> None: ...

    assert second() is None


# -- a Breaker takes what it was not given from the settings -----------------------------------

@pytest.fixture
def own_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test builds its own runtime; the one before is back afterwards."""
    monkeypatch.setattr(_runtime, "_current", None)


def test_an_explicit_breaker_takes_the_options_it_was_not_given_from_the_settings(own_runtime: None) -> None:
    baldur.init(breaker_open_seconds=5, breaker_consecutive_failures=2)

    @baldur.protected("inherits", breaker=Breaker(min_calls=3))
    def down() -> None:
        raise ConnectionError("down")

    for _ in range(2):  # consecutive_failures=2 from the settings
        with pytest.raises(ConnectionError):
            down()
    with pytest.raises(CircuitOpen) as refused:
        down()
    assert 4 < refused.value.retry_after <= 5  # open_for from BALDUR_BREAKER_OPEN_SECONDS


def test_an_option_given_explicitly_wins_over_the_settings(own_runtime: None) -> None:
    baldur.init(breaker_open_seconds=5)

    @baldur.protected("explicit", breaker=Breaker(open_for=30.0, consecutive_failures=1, failure_rate=None))
    def down() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        down()
    with pytest.raises(CircuitOpen) as refused:
        down()
    assert refused.value.retry_after > 5


def test_breaker_repr_shows_what_was_given() -> None:
    assert repr(Breaker()) == "Breaker()"
    assert repr(Breaker(min_calls=3, open_for=5)) == "Breaker(min_calls=3, open_for=5.0)"
    assert Breaker(min_calls=10) != Breaker()  # given explicitly: not taken from the settings


# -- events listed once ---------------------------------------------------------------------

def test_every_event_the_code_logs_is_listed_and_every_listed_event_is_logged() -> None:
    import re
    from pathlib import Path

    from baldur import _log

    package = Path(baldur.__file__).parent
    source = "\n".join(path.read_text() for path in package.rglob("*.py") if path.name != "_log.py")
    families = "|".join(sorted({event.partition(".")[0] for event in _log.EVENTS} | {"runtime"}))
    named = set(re.findall(rf"""["']((?:{families})\.[a-z_]+)["']""", source))
    assert named == set(_log.EVENTS)
