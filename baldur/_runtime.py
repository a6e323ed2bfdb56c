"""The process's Baldur runtime: settings, the store and its two faces.

``init()`` builds it once (later calls with no arguments return it; calls
with other settings rebuild it); everything else asks ``current()``, which
builds it with defaults on first use, so zero configuration works.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

from baldur import _log, _metrics
from baldur._config import Settings, load_settings
from baldur._servers import warn_if_per_process
from baldur.bridges import AsyncOverSync, SyncOverAsync
from baldur.errors import ConfigError, StoreUnavailable
from baldur.policies.breaker import Breaker
from baldur.stores._types import AsyncStore, SyncStore
from baldur.stores.memory import MemoryStore

__all__ = ["Runtime", "current", "init", "reset"]


@dataclass(frozen=True, slots=True, eq=False)
class Runtime:
    """What ``baldur.init()`` returns: the settings in force and the store they chose."""

    settings: Settings
    #: The store's sync face (used by sync callers) and async face.
    sync: SyncStore
    async_: AsyncStore
    default_breaker: Breaker
    #: State is shared between processes (Redis), not per process (memory).
    shared: bool


_lock = threading.RLock()
_store_log = logging.getLogger(_log.EVENTS["store.ready"])
_current: Runtime | None = None


def init(**settings: Any) -> Runtime:
    """Build the runtime from ``settings`` > ``BALDUR_*`` environment > defaults; idempotent."""
    global _current
    with _lock:
        if _current is not None and (not settings or _current.settings == _current.settings.override(**settings)):
            return _current
        built = _build(load_settings(settings))
        old, _current = _current, built
    if old is not None:
        old.sync.close()
    return built


def current() -> Runtime:
    runtime = _current
    return runtime if runtime is not None else init()


def reset() -> None:
    """Forget all state (breakers, limits, counters) and keep the settings: for tests."""
    runtime = _current
    if runtime is not None:
        runtime.sync.reset()


def _build(settings: Settings) -> Runtime:
    _log.configure(settings.log_level, settings.log_format)
    if settings.redis_url is not None:
        from baldur.stores.redis import RedisStore

        redacted = settings.redacted_redis_url() or ""
        shared = RedisStore(settings.redis_url, redacted_url=redacted, prefix=settings.key_prefix,
                            timeout=settings.redis_timeout_ms / 1000.0, max_keys=settings.memory_max_keys)
        if settings.require_shared_store:
            try:
                shared.check_reachable()
            except StoreUnavailable as exc:
                raise ConfigError("BALDUR_REQUIRE_SHARED_STORE", "1", "BALDUR_REQUIRE_SHARED_STORE=0",
                                  f"a shared store is required and {exc}; refusing to start") from None
        shared.start()
        _announce(f"Redis at {redacted}", shared=True)
        runtime = Runtime(settings, SyncOverAsync(shared), shared, settings.default_breaker(), True)
        _metrics.write_behind(runtime)
        return runtime
    if settings.require_shared_store:
        raise ConfigError("BALDUR_REDIS_URL", None, "BALDUR_REDIS_URL=redis://localhost:6379/0",
                          message="BALDUR_REQUIRE_SHARED_STORE=1 refuses the per-process memory store, "
                                  "and BALDUR_REDIS_URL (the shared store) is not set")
    store = MemoryStore(max_keys=settings.memory_max_keys, max_response_bytes=settings.memory_max_response_bytes)
    runtime = Runtime(settings, store, AsyncOverSync(store), settings.default_breaker(), False)
    _announce("memory, per process", shared=False)
    warn_if_per_process(runtime.shared, forked=False)
    return runtime


def _announce(store: str, *, shared: bool) -> None:
    _store_log.info("store.ready: Baldur's store is %s", store,
                    extra={"baldur": {"event": "store.ready", "shared": shared}})


def _after_fork_in_child() -> None:
    runtime = _current
    if runtime is not None:
        warn_if_per_process(runtime.shared, forked=True)


os.register_at_fork(after_in_child=_after_fork_in_child)
