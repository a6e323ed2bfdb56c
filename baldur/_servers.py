"""Which multi-process server we run under, and the warning that the memory store needs there.

The memory store is per process. Under gunicorn or uWSGI with more than one
worker, or in any process forked after ``init()``, each process keeps its own
limits and breakers; that is worth one loud WARNING per process naming the
fix (``BALDUR_REDIS_URL``).
"""

from __future__ import annotations

import logging
import os
import sys
from types import FrameType

__all__ = ["server_workers", "warn_if_per_process"]

_log = logging.getLogger("baldur.store")


def server_workers() -> tuple[str, int, bool] | None:
    """(server, worker count, in the master process) under gunicorn or uWSGI, else ``None``."""
    uwsgi = sys.modules.get("uwsgi")
    if uwsgi is not None:
        return "uWSGI", int(getattr(uwsgi, "numproc", 1)), int(getattr(uwsgi, "worker_id", lambda: 1)()) == 0
    if "gunicorn" not in sys.modules:
        return None
    # gunicorn keeps its settings on the arbiter (master, and a forked child's
    # stack) or on the worker (loading the app in the child): one of them is
    # on the current stack whenever the app is being loaded or a worker forked.
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        cfg = getattr(owner, "cfg", None)
        if cfg is not None and type(owner).__module__.startswith("gunicorn.") and hasattr(cfg, "workers"):
            return "gunicorn", int(cfg.workers), type(owner).__name__ == "Arbiter"
        frame = frame.f_back
    return None


def warn_if_per_process(shared: bool, *, forked: bool) -> None:
    """Log the per-process WARNING when state would silently diverge between processes."""
    if shared:
        return
    server = server_workers()
    if server is not None:
        name, workers, in_master = server
        if workers < 2 or (in_master and not forked):
            # With --preload the master loads the app; each forked worker warns for itself.
            return
        where = f"{name} with {workers} workers"
    elif forked:
        where = "a process forked after baldur.init()"
    else:
        return
    _log.warning(
        "Baldur runs on the in-memory store under %s (pid %d): rate limits, concurrency and circuit "
        "breakers are per process and diverge between workers; set BALDUR_REDIS_URL to share them",
        where, os.getpid(), extra={"baldur": {"event": "store.per_process", "pid": os.getpid()}},
    )
