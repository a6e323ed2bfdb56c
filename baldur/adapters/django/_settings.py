"""``settings.BALDUR``: the process-wide settings for ``baldur.init()`` (over the ``BALDUR_*``
environment, same names in lower case) and the adapter's own options.

Read once in ``AppConfig.ready()``. A problem is kept rather than raised there, so that
``manage.py check`` lists it (``baldur.E001``...); the middleware raises it as a
``ConfigError`` when the server builds its handler, so no server starts with it.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string

from baldur import _runtime
from baldur._config import _BY_NAME, _parse_one
from baldur.errors import ConfigError

__all__ = ["ADAPTER_KEYS", "Problem", "adapter_option", "configured_option", "configured_setting", "read", "start",
           "startup_problems"]

#: Options of the adapter itself, not of the runtime (Flask's ``init_flask`` arguments).
ADAPTER_KEYS = ("key_func", "identity", "exempt")


@dataclass(frozen=True)
class Problem:
    """A problem with ``settings.BALDUR``: its check id and the error to raise."""

    id: str
    error: ConfigError
    hint: str = field(default="")


_problems: list[Problem] = []


def _configured() -> Mapping[str, Any] | None:
    value = getattr(settings, "BALDUR", {})
    return value if isinstance(value, Mapping) else None


def read() -> tuple[dict[str, Any], list[Problem]]:
    """The runtime settings of ``settings.BALDUR`` (validated), and its problems."""
    configured = _configured()
    if configured is None:
        value = getattr(settings, "BALDUR", None)
        return {}, [Problem("baldur.E001", ConfigError(
            "settings.BALDUR", value, "BALDUR = {'rate_limit': '100/minute'}", "expected a dict"))]
    runtime: dict[str, Any] = {}
    problems: list[Problem] = []
    for name, value in configured.items():
        if name in ADAPTER_KEYS:
            try:
                adapter_option(name, value)
            except ConfigError as exc:
                problems.append(Problem("baldur.E003", exc))
            continue
        if not isinstance(name, str) or name not in _BY_NAME:
            close = difflib.get_close_matches(str(name), [*_BY_NAME, *ADAPTER_KEYS], n=1)
            hint = f"did you mean {close[0]!r}?" if close else "see docs/configuration.md for the names"
            problems.append(Problem("baldur.E002", ConfigError(
                f"settings.BALDUR[{name!r}]", value, "BALDUR = {'rate_limit': '100/minute'}",
                message=f"settings.BALDUR has no setting {name!r} ({hint})"), hint))
            continue
        try:
            _parse_one(name, value, origin="settings.BALDUR")
        except ConfigError as exc:
            problems.append(Problem("baldur.E003", exc))
            continue
        runtime[name] = value
    return runtime, problems


def start() -> None:
    """``AppConfig.ready()``: ``baldur.init()`` with ``settings.BALDUR``, once per process."""
    runtime, problems = read()
    _problems[:] = problems
    if problems:
        return
    try:
        _runtime.init(**runtime)
    except ConfigError as exc:  # e.g. BALDUR_REQUIRE_SHARED_STORE=1 without a reachable Redis
        _problems.append(Problem("baldur.E004", exc))


def startup_problems() -> list[Problem]:
    return list(_problems)


def adapter_option(name: str, value: object) -> Any:
    """One of the adapter's own options, checked: ``key_func``/``identity`` (a callable taking
    the request, or its dotted path) and ``exempt`` (URL names)."""
    if name == "exempt":
        if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)) or not all(
                isinstance(item, str) for item in value):
            raise ConfigError("settings.BALDUR['exempt']", value, "BALDUR = {'exempt': ['healthz', 'metrics']}",
                              "a list of URL names (or 'namespace:name')")
        return frozenset(value)
    example = f"BALDUR = {{{name!r}: 'myapp.baldur.{name}'}}"
    if isinstance(value, str):
        try:
            value = import_string(value)
        except ImportError as exc:
            raise ConfigError(f"settings.BALDUR[{name!r}]", value, example, str(exc)) from None
    if not callable(value):
        raise ConfigError(f"settings.BALDUR[{name!r}]", value, example,
                          "a callable taking the request, or its dotted path")
    return value


def configured_option(name: str) -> Any:
    """The adapter option ``name`` from ``settings.BALDUR`` (checked), or ``None``."""
    configured = _configured() or {}
    value = configured.get(name)
    return None if value is None else adapter_option(name, value)


def configured_setting(name: str, default: Any) -> Any:
    """A runtime setting as ``settings.BALDUR`` holds it now (parsed), else ``default`` (the runtime's)."""
    configured = _configured() or {}
    if name not in configured:
        return default
    return _parse_one(name, configured[name], origin="settings.BALDUR")

