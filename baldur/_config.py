"""Settings: ``baldur.init(**kwargs)`` over ``BALDUR_*`` environment variables over defaults.

Each setting is declared once in ``_FIELDS`` with its parser; a bad value is a
``ConfigError`` naming the setting, the value and a good example, and an
unknown ``BALDUR_*`` variable earns a warning with the closest known name.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import re
import sys
import urllib.parse
import warnings
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from baldur.errors import ConfigError
from baldur.policies.breaker import Breaker
from baldur.policies.rate_limit import RateLimit

__all__ = ["Settings", "load_settings", "user_stacklevel", "warn_unknown_app_config"]

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _text(choices: tuple[str, ...] | None = None, lower: bool = True) -> Callable[[str, object, str], Any]:
    def parse(name: str, value: object, example: str) -> str:
        if not isinstance(value, str):
            raise ConfigError(name, value, example, "expected a string")
        text = value.strip()
        text = text.lower() if lower else text
        if choices is not None and text not in choices:
            raise ConfigError(name, value, example, f"one of {', '.join(choices)}")
        return text

    return parse


def _level(name: str, value: object, example: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        level = logging.getLevelName(value)
        if level in _LEVELS:
            return str(level)
    if isinstance(value, str) and value.strip().upper() in _LEVELS:
        return value.strip().upper()
    raise ConfigError(name, value, example, f"one of {', '.join(_LEVELS)}")


def _number(low: float, *, integer: bool = False, low_open: bool = False,
            high: float | None = None, optional: bool = False) -> Callable[[str, object, str], Any]:
    def parse(name: str, value: object, example: str) -> Any:
        if optional and (value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "off"))):
            return None
        number: float
        if isinstance(value, bool):
            raise ConfigError(name, value, example, "expected a number")
        if isinstance(value, int | float):
            number = value
        elif isinstance(value, str):
            try:
                number = int(value.strip()) if integer else float(value.strip())
            except ValueError:
                kind = "a whole number" if integer else "a number"
                raise ConfigError(name, value, example, f"expected {kind}") from None
        else:
            raise ConfigError(name, value, example, "expected a number")
        if integer and number != int(number):
            raise ConfigError(name, value, example, "expected a whole number")
        too_high = high is not None and number > high
        if not math.isfinite(number) or number < low or (low_open and number == low) or too_high:
            bound = f"> {low:g}" if low_open else f"≥ {low:g}"
            if high is not None:
                bound += f" and ≤ {high:g}"
            raise ConfigError(name, value, example, f"must be {bound}")
        return int(number) if integer else float(number)

    return parse


def _flag(name: str, value: object, example: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigError(name, value, example, "expected 1 or 0")


def _rate(name: str, value: object, example: str) -> RateLimit:
    if isinstance(value, RateLimit):
        return value
    if value is None:
        return RateLimit("off")
    try:
        return RateLimit(value, setting=name)  # type: ignore[arg-type]
    except ConfigError as exc:
        raise ConfigError(name, value, example, exc.reason) from None


def _concurrency(name: str, value: object, example: str) -> int | None:
    """``auto`` (None here: the adapter derives it) or a whole number ≥ 1."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    parsed: int = _number(1, integer=True)(name, value, example)
    return parsed


def _key_prefix(name: str, value: object, example: str) -> str:
    """A Redis key namespace: braces would break the keys' hash tag, glob characters the SCAN of reset."""
    text: str = _text(lower=False)(name, value, example)
    if not text or not text.isascii() or not text.isprintable() or any(c in text for c in " {}*?[]\\"):
        raise ConfigError(name, value, example, "printable ASCII without spaces, braces or * ? [ ] \\")
    return text


def _redis_url(name: str, value: object, example: str) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise ConfigError(name, value, example, "expected a URL string")
    url = value.strip()
    scheme = url.partition("://")[0].lower()
    if scheme not in ("redis", "rediss", "unix") or "://" not in url:
        raise ConfigError(name, _redact(url), example, "the scheme must be redis://, rediss:// or unix://")
    try:
        from redis.connection import parse_url
    except ImportError:  # the Redis store says what to install when it starts
        return url
    try:
        # redis-py's own reading of the URL: what it would connect with is what is checked here.
        options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise ConfigError(name, _redact(url), example, str(exc)) from None
    database = urllib.parse.unquote(urllib.parse.urlsplit(url).path).replace("/", "")
    if scheme != "unix" and "db" not in options and database and not database.isdigit():
        # redis-py would quietly use database 0.
        raise ConfigError(name, _redact(url), example,
                          f"the database number {database!r} after the host is not a whole number ≥ 0")
    return url


#: A query parameter whose (decoded) name says it holds a secret: redis-py passes every
#: parameter on to the connection (``?password=``, ``?pass%77ord=``, ``?ssl_password=``).
_SECRET_PARAMETER = re.compile(r"pass|secret|token|auth|key", re.IGNORECASE)


def _redact_parameter(match: re.Match[str]) -> str:
    lead, parameter = match[1], match[2]
    if _SECRET_PARAMETER.search(urllib.parse.unquote_plus(parameter)):
        return f"{lead}{parameter}=***"
    return match[0]


def _redact(url: str) -> str:
    """The URL without its passwords (in the user info or any query parameter), for messages and logs."""
    url = re.sub(r"([?&;])([^=&;#?]*)=([^&;#]*)", _redact_parameter, url)
    scheme, sep, rest = url.partition("://")
    if not sep:  # "user:secret@host" without a scheme must not leak the secret either
        scheme, rest = "", url
    userinfo, at, host = rest.rpartition("@")
    if not at:
        return url
    user = userinfo.partition(":")[0]
    return f"{scheme}{sep}{user + ':' if user else ':'}***@{host}"


def _admin_keys(name: str, value: object, example: str) -> Any:
    from baldur.admin._keys import parse_admin_keys  # the admin package imports nothing at start-up

    return parse_admin_keys(name, value, example)


def _admin_addr(name: str, value: object, example: str) -> str:
    """``host:port`` (an IPv6 host in brackets): where ``baldur admin`` listens."""
    text: str = _text(lower=False)(name, value, example)
    host, colon, port = text.rpartition(":")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not colon or not bare or not port.isdigit() or not 0 < int(port) < 65536 or (":" in bare and bare == host):
        raise ConfigError(name, value, example, "host:port with a port between 1 and 65535, e.g. 127.0.0.1:9180")
    return text


def _admin_hosts(name: str, value: object, example: str) -> tuple[str, ...]:
    """Host names (beyond loopback) the admin API answers to: a comma list, lower case, no ports."""
    if isinstance(value, tuple | list):
        value = ",".join(str(host) for host in value)
    text: str = _text()(name, value, example)
    hosts = tuple(host.strip() for host in text.split(",") if host.strip())
    for host in hosts:
        if not re.fullmatch(r"[a-z0-9.\-]+|\[[0-9a-f:.]+\]", host):
            raise ConfigError(name, value, example, f"{host!r} is not a host name or an address in brackets")
    return hosts


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    default: Any
    parse: Callable[[str, object, str], Any]
    example: str


_FIELDS: tuple[_Field, ...] = (
    _Field("redis_url", None, _redis_url, "BALDUR_REDIS_URL=redis://localhost:6379/0"),
    _Field("log_level", "WARNING", _level, "BALDUR_LOG_LEVEL=INFO"),
    _Field("log_format", "text", _text(("text", "json")), "BALDUR_LOG_FORMAT=json"),
    _Field("rate_limit", "off", _rate, "BALDUR_RATE_LIMIT=100/minute"),
    _Field("max_concurrency", "auto", _concurrency, "BALDUR_MAX_CONCURRENCY=32"),
    _Field("trust_proxy", 0, _number(0, integer=True, high=32), "BALDUR_TRUST_PROXY=1"),
    _Field("breaker_failure_rate", 0.5, _number(0, low_open=True, high=1), "BALDUR_BREAKER_FAILURE_RATE=0.5"),
    _Field("breaker_min_calls", 10, _number(1, integer=True), "BALDUR_BREAKER_MIN_CALLS=10"),
    _Field("breaker_window", 30.0, _number(0, low_open=True), "BALDUR_BREAKER_WINDOW=30"),
    _Field("breaker_consecutive_failures", 5, _number(1, integer=True), "BALDUR_BREAKER_CONSECUTIVE_FAILURES=5"),
    _Field("breaker_open_seconds", 30.0, _number(0, low_open=True), "BALDUR_BREAKER_OPEN_SECONDS=30"),
    _Field("breaker_half_open_calls", 3, _number(1, integer=True), "BALDUR_BREAKER_HALF_OPEN_CALLS=3"),
    _Field("max_queue_ms", 10000.0, _number(0, low_open=True, optional=True), "BALDUR_MAX_QUEUE_MS=10000"),
    _Field("idempotency", "optional", _text(("optional", "required", "off")), "BALDUR_IDEMPOTENCY=optional"),
    _Field("idempotency_ttl", 86400.0, _number(0, low_open=True), "BALDUR_IDEMPOTENCY_TTL=86400"),
    _Field("idempotency_fail_open", False, _flag, "BALDUR_IDEMPOTENCY_FAIL_OPEN=0"),
    _Field("idempotency_max_bytes", 1_048_576, _number(0, integer=True), "BALDUR_IDEMPOTENCY_MAX_BYTES=1048576"),
    _Field("key_prefix", "baldur", _key_prefix, "BALDUR_KEY_PREFIX=baldur"),
    _Field("redis_timeout_ms", 100.0, _number(0, low_open=True), "BALDUR_REDIS_TIMEOUT_MS=100"),
    _Field("memory_max_keys", 100_000, _number(1, integer=True), "BALDUR_MEMORY_MAX_KEYS=100000"),
    _Field("require_shared_store", False, _flag, "BALDUR_REQUIRE_SHARED_STORE=1"),
    _Field("idempotency_max_records", 1000, _number(0, integer=True), "BALDUR_IDEMPOTENCY_MAX_RECORDS=1000"),
    _Field("ipv6_prefix", 64, _number(48, integer=True, high=128), "BALDUR_IPV6_PREFIX=64"),
    _Field("memory_max_response_bytes", 67_108_864, _number(0, integer=True),
           "BALDUR_MEMORY_MAX_RESPONSE_BYTES=67108864"),
    _Field("admin_keys", None, _admin_keys, "BALDUR_ADMIN_KEYS=operator:replace-with-32-random-characters"),
    _Field("admin_addr", "127.0.0.1:9180", _admin_addr, "BALDUR_ADMIN_ADDR=127.0.0.1:9180"),
    _Field("admin_hosts", "", _admin_hosts, "BALDUR_ADMIN_HOSTS=admin.example.internal"),
)
_BY_NAME = {f.name: f for f in _FIELDS}
ENV_NAMES = tuple(f"BALDUR_{f.name.upper()}" for f in _FIELDS)
#: Variables that Baldur's own tooling reads, not settings of the runtime.
#: Read by others than the library: the test suite, and the CLI (an operator's key, never the server's).
_OTHER_KNOWN = ("BALDUR_TEST_REQUIRE_REDIS", "BALDUR_TEST_REQUIRE_BROWSER", "BALDUR_ADMIN_KEY")


@dataclass(frozen=True, slots=True)
class Settings:
    redis_url: str | None
    log_level: str
    log_format: str
    rate_limit: RateLimit
    #: ``None`` means ``auto``: the web adapter derives the ceiling.
    max_concurrency: int | None
    trust_proxy: int
    breaker_failure_rate: float
    breaker_min_calls: int
    breaker_window: float
    breaker_consecutive_failures: int
    breaker_open_seconds: float
    breaker_half_open_calls: int
    max_queue_ms: float | None
    idempotency: str
    idempotency_ttl: float
    #: Run without the exactly-once guarantee while the store is unavailable (logged), instead of 503.
    idempotency_fail_open: bool
    #: Responses larger than this are not stored for replay.
    idempotency_max_bytes: int
    key_prefix: str
    redis_timeout_ms: float
    memory_max_keys: int
    require_shared_store: bool
    #: Responses one identity may have stored per BALDUR_IDEMPOTENCY_TTL (0: no bound).
    idempotency_max_records: int
    #: An IPv6 client's key is its network of this many bits.
    ipv6_prefix: int
    #: The memory store's bound on stored idempotent responses, in bytes.
    memory_max_response_bytes: int
    #: The admin API's keys (``baldur.admin._keys.AdminKeys``: digests and key ids, never a key).
    admin_keys: Any
    #: Where ``baldur admin`` listens.
    admin_addr: str
    #: Host names the admin API answers to besides loopback (DNS rebinding).
    admin_hosts: tuple[str, ...]

    def default_breaker(self) -> Breaker:
        return Breaker(
            failure_rate=self.breaker_failure_rate,
            min_calls=self.breaker_min_calls,
            window=self.breaker_window,
            consecutive_failures=self.breaker_consecutive_failures,
            open_for=self.breaker_open_seconds,
            half_open_calls=self.breaker_half_open_calls,
        )

    def override(self, **changes: Any) -> Settings:
        """These settings with ``changes`` parsed and validated as ``init(**changes)`` would."""
        return replace(self, **{k: _parse_one(k, v, origin="init") for k, v in changes.items()})

    def redacted_redis_url(self) -> str | None:
        return None if self.redis_url is None else _redact(self.redis_url)

    def __repr__(self) -> str:  # the dataclass's own would show the Redis password
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        shown["redis_url"] = self.redacted_redis_url()
        return f"Settings({', '.join(f'{name}={value!r}' for name, value in shown.items())})"


def _parse_one(name: str, value: object, origin: str) -> Any:
    """Parse one setting; ``origin`` (``env``, ``init``, ``init_flask``, ``app.config``) shapes the message."""
    spec = _BY_NAME.get(name)
    if spec is None:
        close = difflib.get_close_matches(name, _BY_NAME, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(_BY_NAME)}"
        meant = _BY_NAME[close[0]] if close else _FIELDS[0]
        raise ConfigError(f"baldur.{origin}({name}=...)", value,
                          f"baldur.{origin}({meant.name}={meant.example.partition('=')[2]!r})",
                          message=f"baldur.{origin}() has no setting {name!r} ({hint})")
    env_name = f"BALDUR_{name.upper()}"
    good = spec.example.partition("=")[2]
    if origin == "env":
        label, example = env_name, spec.example
    elif origin == "app.config":
        label, example = f"app.config[{env_name!r}]", f"app.config[{env_name!r}] = {good!r}"
    elif origin == "settings.BALDUR":
        label, example = f"settings.BALDUR[{name!r}]", f"BALDUR = {{{name!r}: {good!r}}}"
    else:
        label, example = f"{origin}({name}=...)", f"{origin}({name}={good!r})"
    return spec.parse(label, value, example)


def load_settings(overrides: Mapping[str, Any] | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings: ``overrides`` > ``BALDUR_*`` in ``environ`` > defaults."""
    env = os.environ if environ is None else environ
    _warn_unknown(env)
    values: dict[str, Any] = {}
    for f in fields(Settings):
        spec = _BY_NAME[f.name]
        raw = env.get(f"BALDUR_{f.name.upper()}")
        values[f.name] = spec.parse(spec.name, spec.default, spec.example) if raw is None else _parse_one(
            f.name, raw, origin="env")
    settings = Settings(**values)
    return settings.override(**overrides) if overrides else settings


def _warn_unknown(env: Mapping[str, str]) -> None:
    for key in env:
        if key.startswith("BALDUR_") and key not in ENV_NAMES and key not in _OTHER_KNOWN:
            close = difflib.get_close_matches(key, ENV_NAMES, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            warnings.warn(f"unknown setting {key} is ignored{hint}", UserWarning, stacklevel=user_stacklevel())


def warn_unknown_app_config(config: Mapping[str, Any], read: Collection[str]) -> None:
    """Warn about the ``BALDUR_*`` keys of a web app's config that its adapter does not read (``read``)."""
    for key in config:
        if not key.startswith("BALDUR_") or key in read:
            continue
        if key in ENV_NAMES:
            setting = key.removeprefix("BALDUR_").lower()
            why = (f"it is a process-wide setting: set it in the environment or "
                   f"baldur.init({setting}=...); app.config holds only {', '.join(sorted(read))}")
        else:
            close = difflib.get_close_matches(key, [*read, *ENV_NAMES], n=1, cutoff=0.6)
            why = f"no such setting; did you mean {close[0]}?" if close else "no such setting"
        warnings.warn(f"app.config[{key!r}] is ignored: {why}", UserWarning, stacklevel=user_stacklevel())


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning point at the first frame outside Baldur: the user's line,
    however deep in Baldur the warning is raised (``init()``, ``init_flask()``, a first protected call)."""
    frame = sys._getframe(1)  # the caller of this function, i.e. the frame that calls warnings.warn
    level = 1
    while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] == "baldur":
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level
