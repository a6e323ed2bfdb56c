"""Settings: ``baldur.init(**kwargs)`` over ``BALDUR_*`` environment variables over defaults.

``load_settings(overrides, environ)`` takes the environment as an argument, so
most tests here never touch ``os.environ``.
"""

from __future__ import annotations

import dataclasses
import logging
import string
import subprocess
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import baldur
from baldur._config import ENV_NAMES, Settings, load_settings
from baldur.errors import ConfigError
from baldur.policies.rate_limit import RateLimit

#: The variables of the design's configuration table (docs/configuration.md), in its order.
DESIGN_VARIABLES = (
    "BALDUR_REDIS_URL",
    "BALDUR_LOG_LEVEL",
    "BALDUR_LOG_FORMAT",
    "BALDUR_RATE_LIMIT",
    "BALDUR_MAX_CONCURRENCY",
    "BALDUR_TRUST_PROXY",
    "BALDUR_BREAKER_FAILURE_RATE",
    "BALDUR_BREAKER_MIN_CALLS",
    "BALDUR_BREAKER_WINDOW",
    "BALDUR_BREAKER_CONSECUTIVE_FAILURES",
    "BALDUR_BREAKER_OPEN_SECONDS",
    "BALDUR_BREAKER_HALF_OPEN_CALLS",
    "BALDUR_MAX_QUEUE_MS",
    "BALDUR_IDEMPOTENCY",
    "BALDUR_IDEMPOTENCY_TTL",
    "BALDUR_KEY_PREFIX",
    "BALDUR_REDIS_TIMEOUT_MS",
    "BALDUR_MEMORY_MAX_KEYS",
    "BALDUR_IPV6_PREFIX",
    "BALDUR_REQUIRE_SHARED_STORE",
    "BALDUR_ADMIN_KEYS",
    "BALDUR_ADMIN_ADDR",
)
#: Settings added beyond the design's table (issue 5: idempotency).
EXTRA_VARIABLES = ("BALDUR_IDEMPOTENCY_FAIL_OPEN", "BALDUR_IDEMPOTENCY_MAX_BYTES", "BALDUR_MEMORY_MAX_RESPONSE_BYTES",
                   "BALDUR_IDEMPOTENCY_MAX_RECORDS",
                   # issue 12: the host names the admin API answers to besides loopback (DNS rebinding).
                   "BALDUR_ADMIN_HOSTS")

BAD_ENV: dict[str, tuple[str, ...]] = {
    "BALDUR_REDIS_URL": ("localhost:6379", "http://localhost:6379/0", "redis:/localhost", "memcached://x"),
    "BALDUR_LOG_LEVEL": ("LOUD", "warn", "5", ""),
    "BALDUR_LOG_FORMAT": ("xml", "", "JSONL"),
    "BALDUR_RATE_LIMIT": ("abc", "0/minute", "10/fortnight", "", "100"),
    "BALDUR_MAX_CONCURRENCY": ("0", "-4", "lots", "2.5", "nan"),
    "BALDUR_TRUST_PROXY": ("-1", "33", "1.5", "two", ""),
    "BALDUR_BREAKER_FAILURE_RATE": ("0", "1.5", "-0.5", "nan", "inf", "half", "50%"),
    "BALDUR_BREAKER_MIN_CALLS": ("0", "-1", "2.5", "ten", ""),
    "BALDUR_BREAKER_WINDOW": ("0", "-30", "inf", "nan", "30s"),
    "BALDUR_BREAKER_CONSECUTIVE_FAILURES": ("0", "1.5", "five"),
    "BALDUR_BREAKER_OPEN_SECONDS": ("0", "-1", "nan", "inf", "soon"),
    "BALDUR_BREAKER_HALF_OPEN_CALLS": ("0", "-3", "1.5", "x"),
    "BALDUR_MAX_QUEUE_MS": ("0", "-5", "nan", "inf", "soon"),
    "BALDUR_IDEMPOTENCY": ("sometimes", "on", "1"),
    "BALDUR_IDEMPOTENCY_TTL": ("0", "-1", "forever", "inf"),
    "BALDUR_IDEMPOTENCY_FAIL_OPEN": ("maybe", "2"),
    "BALDUR_IDEMPOTENCY_MAX_BYTES": ("-1", "1.5", "lots"),
    "BALDUR_KEY_PREFIX": ("", "my app", "{baldur}", "app*", "bäldur"),
    "BALDUR_REDIS_TIMEOUT_MS": ("0", "-100", "fast", "nan"),
    "BALDUR_MEMORY_MAX_KEYS": ("0", "-1", "lots", "1.5"),
    "BALDUR_MEMORY_MAX_RESPONSE_BYTES": ("-1", "lots", "1.5"),
    "BALDUR_IPV6_PREFIX": ("47", "129", "64.5", "wide"),
    "BALDUR_IDEMPOTENCY_MAX_RECORDS": ("-1", "many", "2.5"),
    "BALDUR_REQUIRE_SHARED_STORE": ("maybe", "2", "-1"),
    "BALDUR_ADMIN_KEYS": ("viewer", "root:0123456789abcdef0123", "viewer:short", "viewer:",
                          "viewer:0123456789abcdef,admin:0123456789abcdef", "@/nonexistent/admin-keys"),
    "BALDUR_ADMIN_ADDR": ("9180", "localhost", "127.0.0.1:99999", "127.0.0.1:port", "", "127.0.0.1:0"),
    "BALDUR_ADMIN_HOSTS": ("admin.example:443", "bad host", "http://x", "*"),
}
BAD_ENV_CASES = [(name, value) for name, values in BAD_ENV.items() for value in values]


def env_example_value(name: str, example: str) -> str:
    """The good value of an example written ``BALDUR_X=value`` (the rate limit has its own syntax)."""
    if name == "BALDUR_RATE_LIMIT":
        assert "100/minute" in example
        return "100/minute"
    assert example.startswith(f"{name}="), example
    return example.partition("=")[2]


# -- the variables ------------------------------------------------------------------


def test_every_design_variable_is_a_setting() -> None:
    assert set(ENV_NAMES) == set(DESIGN_VARIABLES) | set(EXTRA_VARIABLES)
    assert set(BAD_ENV) == set(DESIGN_VARIABLES) | set(EXTRA_VARIABLES)


def test_defaults_are_those_of_the_design() -> None:
    s = load_settings(environ={})
    assert s.redis_url is None
    assert (s.log_level, s.log_format) == ("WARNING", "text")
    assert not s.rate_limit.enabled
    assert s.max_concurrency is None  # auto
    assert s.trust_proxy == 0
    assert (s.breaker_failure_rate, s.breaker_min_calls, s.breaker_window, s.breaker_consecutive_failures,
            s.breaker_open_seconds, s.breaker_half_open_calls) == (0.5, 10, 30.0, 5, 30.0, 3)
    assert s.max_queue_ms == 10000.0
    assert (s.idempotency, s.idempotency_ttl) == ("optional", 86400.0)
    assert s.key_prefix == "baldur"
    assert s.redis_timeout_ms == 100.0
    assert s.memory_max_keys == 100_000
    assert s.require_shared_store is False
    assert s.default_breaker() == baldur.Breaker(failure_rate=0.5, min_calls=10, window=30, consecutive_failures=5,
                                                 open_for=30, half_open_calls=3)
    assert baldur.Breaker().inherit(s.default_breaker()) == s.default_breaker()  # the signature shows these


@pytest.mark.parametrize(("name", "value"), BAD_ENV_CASES, ids=[f"{n}={v!r}" for n, v in BAD_ENV_CASES])
def test_bad_variable_is_a_config_error_naming_variable_value_and_example(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={name: value})
    message = str(caught.value)
    assert message.startswith(f"{name}=")
    if name == "BALDUR_ADMIN_KEYS" and not value.startswith("@"):
        # A key is a secret: the message names the entry by position and key id, never the key itself.
        assert "entry " in message
        for entry in value.split(","):
            key = entry.partition(":")[2] if ":" in entry else entry
            if key and key not in ("viewer", "operator", "admin"):
                assert key not in message.replace(name, "")
    else:
        assert repr(value) in message
    assert f"for example: {caught.value.example}" in message
    good = env_example_value(name, caught.value.example)
    load_settings(environ={name: good})  # the example given is itself good


GOOD_ENV: list[tuple[str, str, str, object]] = [
    ("BALDUR_REDIS_URL", "redis://localhost:6379/0", "redis_url", "redis://localhost:6379/0"),
    ("BALDUR_REDIS_URL", " rediss://:pw@cache:6380/1 ", "redis_url", "rediss://:pw@cache:6380/1"),
    ("BALDUR_REDIS_URL", "unix:///run/redis.sock", "redis_url", "unix:///run/redis.sock"),
    ("BALDUR_REDIS_URL", "", "redis_url", None),
    ("BALDUR_LOG_LEVEL", "info", "log_level", "INFO"),
    ("BALDUR_LOG_LEVEL", " Debug ", "log_level", "DEBUG"),
    ("BALDUR_LOG_LEVEL", "CRITICAL", "log_level", "CRITICAL"),
    ("BALDUR_LOG_FORMAT", "JSON", "log_format", "json"),
    ("BALDUR_LOG_FORMAT", "text", "log_format", "text"),
    ("BALDUR_MAX_CONCURRENCY", "auto", "max_concurrency", None),
    ("BALDUR_MAX_CONCURRENCY", "AUTO", "max_concurrency", None),
    ("BALDUR_MAX_CONCURRENCY", "32", "max_concurrency", 32),
    ("BALDUR_TRUST_PROXY", "0", "trust_proxy", 0),
    ("BALDUR_TRUST_PROXY", " 2 ", "trust_proxy", 2),
    ("BALDUR_BREAKER_FAILURE_RATE", "0.25", "breaker_failure_rate", 0.25),
    ("BALDUR_BREAKER_FAILURE_RATE", "1", "breaker_failure_rate", 1.0),
    ("BALDUR_BREAKER_MIN_CALLS", "20", "breaker_min_calls", 20),
    ("BALDUR_BREAKER_WINDOW", "0.5", "breaker_window", 0.5),
    ("BALDUR_BREAKER_WINDOW", "60", "breaker_window", 60.0),
    ("BALDUR_BREAKER_CONSECUTIVE_FAILURES", "1", "breaker_consecutive_failures", 1),
    ("BALDUR_BREAKER_OPEN_SECONDS", "5", "breaker_open_seconds", 5.0),
    ("BALDUR_BREAKER_HALF_OPEN_CALLS", "1", "breaker_half_open_calls", 1),
    ("BALDUR_MAX_QUEUE_MS", "500", "max_queue_ms", 500.0),
    ("BALDUR_MAX_QUEUE_MS", "off", "max_queue_ms", None),
    ("BALDUR_IDEMPOTENCY", "required", "idempotency", "required"),
    ("BALDUR_IDEMPOTENCY", "OFF", "idempotency", "off"),
    ("BALDUR_IDEMPOTENCY_TTL", "3600", "idempotency_ttl", 3600.0),
    ("BALDUR_KEY_PREFIX", "MyApp:v2", "key_prefix", "MyApp:v2"),
    ("BALDUR_REDIS_TIMEOUT_MS", "250", "redis_timeout_ms", 250.0),
    ("BALDUR_MEMORY_MAX_KEYS", "5000", "memory_max_keys", 5000),
    ("BALDUR_REQUIRE_SHARED_STORE", "1", "require_shared_store", True),
    ("BALDUR_REQUIRE_SHARED_STORE", "true", "require_shared_store", True),
    ("BALDUR_REQUIRE_SHARED_STORE", "0", "require_shared_store", False),
    ("BALDUR_REQUIRE_SHARED_STORE", "no", "require_shared_store", False),
]


@pytest.mark.parametrize(("variable", "raw", "field", "expected"), GOOD_ENV,
                         ids=[f"{v}={r!r}" for v, r, _, _ in GOOD_ENV])
def test_good_variable_parses(variable: str, raw: str, field: str, expected: object) -> None:
    value = getattr(load_settings(environ={variable: raw}), field)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(("raw", "quota", "period"), [("100/minute", 100, 60.0), ("10/second", 10, 1.0),
                                                      ("5000/hour", 5000, 3600.0), ("1 per day", 1, 86400.0)])
def test_rate_limit_variable_parses(raw: str, quota: int, period: float) -> None:
    limit = load_settings(environ={"BALDUR_RATE_LIMIT": raw}).rate_limit
    assert (limit.quota, limit.period, limit.enabled) == (quota, period, True)


def test_rate_limit_off_disables() -> None:
    assert not load_settings(environ={"BALDUR_RATE_LIMIT": "off"}).rate_limit.enabled


def test_breaker_variables_make_the_default_breaker() -> None:
    s = load_settings(environ={
        "BALDUR_BREAKER_FAILURE_RATE": "0.2", "BALDUR_BREAKER_MIN_CALLS": "4", "BALDUR_BREAKER_WINDOW": "12",
        "BALDUR_BREAKER_CONSECUTIVE_FAILURES": "2", "BALDUR_BREAKER_OPEN_SECONDS": "7",
        "BALDUR_BREAKER_HALF_OPEN_CALLS": "1",
    })
    assert s.default_breaker() == baldur.Breaker(failure_rate=0.2, min_calls=4, window=12.0, consecutive_failures=2,
                                                 open_for=7.0, half_open_calls=1)


# -- unknown variables ------------------------------------------------------------


@pytest.mark.parametrize(("typo", "meant"), [("BALDUR_RATELIMIT", "BALDUR_RATE_LIMIT"),
                                             ("BALDUR_LOGLEVEL", "BALDUR_LOG_LEVEL"),
                                             ("BALDUR_REDIS_URI", "BALDUR_REDIS_URL"),
                                             ("BALDUR_BREAKER_OPEN_SECOND", "BALDUR_BREAKER_OPEN_SECONDS")])
def test_an_unknown_variable_warns_with_the_closest_name(typo: str, meant: str) -> None:
    with pytest.warns(UserWarning, match=f"{typo}.*did you mean {meant}\\?"):
        s = load_settings(environ={typo: "100/minute"})
    assert s == load_settings(environ={})  # and is ignored


def test_an_unknown_variable_far_from_every_name_still_warns() -> None:
    with pytest.warns(UserWarning, match="BALDUR_XYZZY"):
        load_settings(environ={"BALDUR_XYZZY": "1"})


def test_known_and_foreign_variables_do_not_warn() -> None:
    environ = {name: "" for name in ("PATH", "HOME", "NOT_BALDUR_X", "baldur_lower")}
    environ.update({"BALDUR_TEST_REQUIRE_REDIS": "1", "BALDUR_LOG_LEVEL": "INFO"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_settings(environ=environ)


# -- overrides (init kwargs) ------------------------------------------------------


def test_overrides_beat_the_environment() -> None:
    environ = {"BALDUR_LOG_LEVEL": "INFO", "BALDUR_TRUST_PROXY": "1", "BALDUR_LOG_FORMAT": "json"}
    s = load_settings({"log_level": "ERROR", "trust_proxy": 3}, environ)
    assert (s.log_level, s.trust_proxy) == ("ERROR", 3)
    assert s.log_format == "json"  # the environment still fills what the overrides leave


def test_overrides_take_python_values() -> None:
    limit = RateLimit("5/second")
    s = load_settings({"rate_limit": limit, "max_concurrency": 8, "require_shared_store": False,
                       "log_level": logging.INFO, "max_queue_ms": None, "breaker_window": 2}, {})
    assert s.rate_limit is limit
    assert (s.max_concurrency, s.require_shared_store, s.log_level, s.max_queue_ms) == (8, False, "INFO", None)
    assert s.breaker_window == 2.0 and isinstance(s.breaker_window, float)
    assert load_settings({"rate_limit": "10/second"}, {}).rate_limit.quota == 10
    assert not load_settings({"rate_limit": None}, {}).rate_limit.enabled


BAD_KWARGS: list[tuple[str, object]] = [
    ("log_level", "LOUD"),
    ("log_level", 5),
    ("log_format", 1),
    ("rate_limit", "10/fortnight"),
    ("rate_limit", 100),
    ("max_concurrency", 0),
    ("max_concurrency", True),
    ("max_concurrency", 2.5),
    ("trust_proxy", True),
    ("trust_proxy", -1),
    ("breaker_failure_rate", float("nan")),
    ("breaker_failure_rate", 2),
    ("breaker_failure_rate", True),
    ("breaker_min_calls", 2.5),
    ("breaker_window", float("inf")),
    ("breaker_window", "30 seconds"),
    ("breaker_open_seconds", 0),
    ("breaker_half_open_calls", [3]),
    ("max_queue_ms", -1),
    ("idempotency", "sometimes"),
    ("idempotency_ttl", False),
    ("key_prefix", 7),
    ("key_prefix", "a{b}"),
    ("redis_timeout_ms", float("nan")),
    ("memory_max_keys", 0),
    ("require_shared_store", "maybe"),
    ("require_shared_store", 2),
    ("redis_url", 6379),
    ("redis_url", "localhost:6379"),
]


@pytest.mark.parametrize(("name", "value"), BAD_KWARGS, ids=[f"{n}={v!r}" for n, v in BAD_KWARGS])
def test_bad_kwarg_to_init_is_a_config_error(name: str, value: object) -> None:
    before = baldur.init()
    with pytest.raises(ConfigError) as caught:
        baldur.init(**{name: value})
    message = str(caught.value)
    assert name in message
    assert repr(value) in message
    assert "for example: " in message
    assert baldur.init() is before  # a refused init changes nothing


def test_init_examples_are_python() -> None:
    with pytest.raises(ConfigError) as caught:
        baldur.init(log_level="LOUD")
    assert caught.value.example == "init(log_level='INFO')"


@pytest.mark.parametrize(("typo", "meant"), [("rate_limt", "rate_limit"), ("loglevel", "log_level"),
                                             ("breaker_open_for", "breaker_open_seconds"),
                                             ("max_concurency", "max_concurrency")])
def test_an_unknown_kwarg_is_a_config_error_suggesting_the_closest_name(typo: str, meant: str) -> None:
    before = baldur.init()
    with pytest.raises(ConfigError, match=f"did you mean '{meant}'") as caught:
        baldur.init(**{typo: "x"})
    assert typo in str(caught.value)
    assert baldur.init() is before
    with pytest.raises(ConfigError, match=meant):
        load_settings({typo: "x"}, {})


def test_an_unknown_kwarg_far_from_every_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"known: .*rate_limit"):
        baldur.init(zzzzzz=1)


@pytest.fixture
def restore_runtime() -> Iterator[None]:
    """Tests that really change the runtime's settings get the previous settings back afterwards."""
    saved: Settings = baldur.init().settings
    yield
    baldur.init(**{f.name: getattr(saved, f.name) for f in dataclasses.fields(saved)})
    assert baldur.init().settings == saved


def test_init_kwargs_beat_the_environment(restore_runtime: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BALDUR_LOG_LEVEL", "INFO")
    monkeypatch.setenv("BALDUR_TRUST_PROXY", "2")
    runtime = baldur.init(log_level="ERROR", memory_max_keys=1234)
    assert runtime.settings.log_level == "ERROR"
    assert runtime.settings.trust_proxy == 2  # read from the environment when the runtime was rebuilt
    assert runtime.settings.memory_max_keys == 1234
    assert logging.getLogger("baldur").level == logging.ERROR
    assert baldur.init() is runtime  # no arguments: the same runtime
    assert baldur.init(log_level="error") is runtime  # the same settings: the same runtime


# -- the Redis password -----------------------------------------------------------

PASSWORDS = st.text(alphabet=string.ascii_uppercase + string.digits + "!$-_.~", min_size=8, max_size=24)
BAD_URL_SHAPES = (
    "http://app:{pw}@cache.internal:6379/0",
    "tcp://:{pw}@localhost:6379",
    "app:{pw}@localhost:6379",
    "redis:/app:{pw}@localhost:6379/0",
    "redis//:{pw}@localhost",
    "localhost:6379/0?password={pw}",
    "http://localhost:6379/0?db=1&password={pw}",
)


@given(password=PASSWORDS, shape=st.sampled_from(BAD_URL_SHAPES))
@settings(max_examples=100, deadline=None)
def test_a_password_never_appears_in_the_error(password: str, shape: str) -> None:
    url = shape.format(pw=password)
    # A "password" that the message says anyway (BALDUR_R, redis, ...) proves nothing.
    with pytest.raises(ConfigError) as template:
        load_settings({}, {"BALDUR_REDIS_URL": shape.format(pw="\x00")})
    assume(password not in str(template.value) and password not in repr(template.value.args))
    for overrides, environ in (({}, {"BALDUR_REDIS_URL": url}), ({"redis_url": url}, {})):
        with pytest.raises(ConfigError) as caught:
            load_settings(overrides, environ)
        error = caught.value
        assert "REDIS_URL" in str(error) or "redis_url" in str(error)
        for text in (str(error), repr(error), repr(error.value), repr(error.args)):
            assert password not in text
        assert "***" in str(error)


def test_a_password_with_at_and_colon_is_redacted_whole() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"BALDUR_REDIS_URL": "http://app:p@ss:w0rd@localhost:6379/0"})
    assert "p@ss:w0rd" not in str(caught.value) and "w0rd" not in str(caught.value)
    assert "http://app:***@localhost:6379/0" in str(caught.value)


def test_a_good_url_keeps_its_password_but_the_redacted_form_hides_it() -> None:
    s = load_settings(environ={"BALDUR_REDIS_URL": "redis://app:S3CRET-PW@cache:6379/0"})
    assert s.redis_url == "redis://app:S3CRET-PW@cache:6379/0"
    assert s.redacted_redis_url() == "redis://app:***@cache:6379/0"
    assert load_settings(environ={}).redacted_redis_url() is None


def _settings_kwargs(s: Settings) -> dict[str, Any]:
    return {f.name: getattr(s, f.name) for f in dataclasses.fields(s)}


def test_settings_round_trip_through_overrides() -> None:
    s = load_settings(environ={"BALDUR_RATE_LIMIT": "10/second", "BALDUR_MAX_QUEUE_MS": "off",
                               "BALDUR_REQUIRE_SHARED_STORE": "1", "BALDUR_KEY_PREFIX": "svc"})
    assert load_settings(_settings_kwargs(s), {}) == s


# -- messages that point at the fix ---------------------------------------------------------------

def test_an_unknown_kwarg_gets_an_example_of_the_setting_it_resembles() -> None:
    with pytest.raises(ConfigError) as caught:
        baldur.init(rate_limt="5/minute")
    assert caught.value.example == "baldur.init(rate_limit='100/minute')"
    assert str(caught.value) == ("baldur.init() has no setting 'rate_limt' (did you mean 'rate_limit'?); "
                                 "for example: baldur.init(rate_limit='100/minute')")


def test_an_unknown_variable_warning_points_at_the_users_line(restore_runtime: None,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # (the misspelt variable is gone before restore_runtime rebuilds the runtime: it would warn again)
    with monkeypatch.context() as env, pytest.warns(
            UserWarning, match="BALDUR_RATE_LIMT.*did you mean BALDUR_RATE_LIMIT") as caught:
        env.setenv("BALDUR_RATE_LIMT", "5/minute")
        baldur.init(memory_max_keys=4321)  # other settings: the runtime is rebuilt and the environment read
    assert [w.filename for w in caught if "BALDUR_RATE_LIMT" in str(w.message)] == [__file__]


def test_requiring_a_shared_store_without_one_says_which_setting_is_missing(restore_runtime: None,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BALDUR_REDIS_URL", raising=False)
    with pytest.raises(ConfigError) as caught:
        baldur.init(require_shared_store=True)
    assert str(caught.value) == ("BALDUR_REQUIRE_SHARED_STORE=1 refuses the per-process memory store, and "
                                 "BALDUR_REDIS_URL (the shared store) is not set; "
                                 "for example: BALDUR_REDIS_URL=redis://localhost:6379/0")
    assert caught.value.setting == "BALDUR_REDIS_URL"


def test_without_redis_py_the_redis_store_names_an_install_that_works() -> None:
    """The registry's ``baldur-framework`` is another project until this one is published."""
    code = ("import sys; sys.modules['redis'] = None\n"
            "try:\n    import baldur.stores.redis\nexcept ImportError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install -e '.[redis]' in a checkout of Baldur" in out
    assert "baldur-framework" not in out
