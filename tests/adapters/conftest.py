"""Fixtures of the Flask adapter tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from baldur import _runtime


@pytest.fixture
def fresh_runtime() -> Iterator[Callable[[], _runtime.Runtime]]:
    """``build()`` makes a brand-new runtime that re-reads ``BALDUR_*`` from the environment
    (``baldur.init()`` alone returns the cached one); the previous runtime is restored after."""
    saved = _runtime._current
    built: list[_runtime.Runtime] = []

    def build() -> _runtime.Runtime:
        with _runtime._lock:
            _runtime._current = None
        runtime = _runtime.init()
        built.append(runtime)
        return runtime

    yield build
    with _runtime._lock:
        last, _runtime._current = _runtime._current, saved
    if last is not None and last not in built:
        built.append(last)  # rebuilt by a baldur.init(**settings) inside the test
    for runtime in built:
        if runtime is not saved:
            runtime.sync.close()
