"""Load shedding every web adapter shares: this process's requests in flight against its
ceiling and the adaptive limit, and CoDel on ``X-Request-Start`` queue delay."""

from __future__ import annotations

import threading
import time

from baldur.policies.concurrency import admits
from baldur.policies.shedding import AdaptiveLimit, Priority, QueueDelay

__all__ = ["_InFlight", "_QueueShedder"]


class _InFlight:
    """This process's requests in flight, against the explicit ceiling and the adaptive limit.

    The requests running are a set: adding and discarding are atomic, so without an
    explicit ceiling a request takes no lock. The adaptive limit may then be passed by
    the few threads that check it at the same instant, which it tolerates (it moves by
    small steps and is not a promise); an explicit ceiling is a promise, kept under a lock.
    The policy's averages are updated without a lock too: two threads finishing at once
    may lose one latency sample, nothing else.
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.running: set[object] = set()
        self.adaptive = AdaptiveLimit()
        self._ceiling = threading.Lock()

    def enter(self, request: object, priority: Priority) -> bool:
        if self.limit is None:
            if not self.adaptive.admits(len(self.running), priority):
                return False
            self.running.add(request)
            return True
        with self._ceiling:
            running = len(self.running)
            if not admits(running, self.limit) or not self.adaptive.admits(running, priority):
                return False
            self.running.add(request)
            return True

    def leave(self, request: object, entered_at: float) -> None:
        """``request``, which ``enter`` admitted at ``entered_at`` (``time.monotonic()``), is done."""
        running = len(self.running)
        self.running.discard(request)
        self.adaptive.observe(time.monotonic() - entered_at, running)

    def retry_after(self) -> float:
        return self.adaptive.retry_after()


class _QueueShedder:
    """CoDel on ``X-Request-Start`` queue delay, shared by this process's threads."""

    def __init__(self, ceiling: float | None) -> None:
        self.policy = QueueDelay(ceiling=ceiling)
        self._lock = threading.Lock()

    def admits(self, now: float, waited: float, service_time: float, priority: Priority) -> tuple[bool, float]:
        """Whether a request that waited ``waited`` runs, and the Retry-After if it does not."""
        with self._lock:
            if self.policy.admits(now, waited, priority, service_time):
                return True, 0.0
            return False, self.policy.retry_after(now)
