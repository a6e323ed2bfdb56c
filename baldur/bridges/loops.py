"""Event loops that sync callers drive themselves, and the process's background loop.

A thread hop costs more here than a whole Flask request (``BlockingPortal.call``
≈ 270 µs, against ≈ 12 µs for ``run_until_complete`` on a loop the calling
thread drives). So a sync caller that needs I/O checks a loop out of a small
pool, drives it in its own thread, and gives it back: request threads that
come and go (Flask's dev server starts one per request) share a few loops and
leak none. The pool holds at most as many loops as threads ever ran at once.

The background loop (one per process, an anyio ``BlockingPortal`` in a daemon
thread) runs what must happen between calls and serves callers that are
already inside a running event loop, where driving a second loop is illegal.

Both are made lazily, forgotten in a child after ``fork()`` (the parent's loop
thread does not exist there and its connections are not the child's), and
closed at interpreter exit.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

__all__ = ["BackgroundLoop", "LoopPool", "background", "is_home_loop", "loop_pool", "run_sync"]

T = TypeVar("T")


class LoopPool:
    """asyncio loops for sync callers to check out, drive in their own thread, and return."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[asyncio.AbstractEventLoop] = []
        self._all: list[asyncio.AbstractEventLoop] = []

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        with self._lock:
            loop = self._idle.pop() if self._idle else None
        if loop is None:
            loop = asyncio.new_event_loop()
            with self._lock:
                self._all.append(loop)
        try:
            return loop.run_until_complete(coro)
        finally:
            with self._lock:
                self._idle.append(loop)

    @property
    def size(self) -> int:
        return len(self._all)

    def owns(self, loop: asyncio.AbstractEventLoop) -> bool:
        return loop in self._all

    def close(self, finalize: Callable[[asyncio.AbstractEventLoop], Awaitable[None]] | None = None) -> None:
        """Close every idle loop, after running ``finalize(loop)`` on it (to close its connections)."""
        with self._lock:
            loops, self._idle, self._all = self._idle, [], []
        for loop in loops:
            if finalize is not None:
                loop.run_until_complete(finalize(loop))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def forget(self) -> None:
        """After fork: the parent's loops are not ours to run or close."""
        _orphans.append(self._all)
        self._lock = threading.Lock()
        self._idle, self._all = [], []


class BackgroundLoop:
    """The process's one background event loop, started on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cm: AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None
        #: The background thread's asyncio loop, once started.
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def running(self) -> bool:
        return self._portal is not None

    def portal(self) -> BlockingPortal:
        portal = self._portal
        if portal is not None:
            return portal
        with self._lock:
            if self._portal is None:
                self._cm = start_blocking_portal("asyncio", name="baldur-background")
                portal = self._cm.__enter__()
                self.loop = portal.call(_running_loop)
                self._portal = portal
            return self._portal

    def call(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        return self.portal().call(func, *args)

    def close(self) -> None:
        with self._lock:
            cm, portal, self._cm, self._portal, self.loop = self._cm, self._portal, None, None, None
        if cm is not None and portal is not None:
            # Cancel what still runs there (flushers, probers): the portal would wait for it forever.
            with contextlib.suppress(RuntimeError):
                portal.call(portal.stop, True)
            cm.__exit__(None, None, None)

    def forget(self) -> None:
        # Dropping the parent's portal context manager would finalise it, and its
        # cleanup waits for the parent's loop thread, which does not exist here.
        _orphans.append((self._cm, self._portal, self.loop))
        self._lock = threading.Lock()
        self._cm = self._portal = self.loop = None


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


#: What a forked child inherited from the parent's loops: kept alive, never run nor finalised.
_orphans: list[object] = []
_loops = LoopPool()
background = BackgroundLoop()


def _in_running_loop() -> bool:
    return asyncio._get_running_loop() is not None


def run_sync(func: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
    """Run ``func(*args)`` to completion from sync code, in this thread when possible."""
    if _in_running_loop():
        # A sync caller inside a running loop cannot drive a loop of its own.
        return background.call(func, *args)
    return _loops.run(func(*args))


def loop_pool() -> LoopPool:
    return _loops


def is_home_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """A long-lived loop of ours (a pooled loop or the background loop): it may own connections."""
    return loop is background.loop or _loops.owns(loop)


def _after_fork_in_child() -> None:
    _loops.forget()
    background.forget()


def _at_exit() -> None:
    background.close()
    _loops.close()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_exit)
