"""Which multi-process server we run under, and the warning that the memory store needs there.

The memory store is per process. Under gunicorn, uWSGI or uvicorn with more
than one worker, or in any process forked after ``init()``, each process keeps its own
limits and breakers; that is worth one loud WARNING per process naming the
fix (``BALDUR_REDIS_URL``).
"""

from __future__ import annotations

import logging
import os
import sys
from types import FrameType

from baldur._log import EVENTS

__all__ = ["server_workers", "warn_if_per_process"]

_log = logging.getLogger(EVENTS["store.per_process"])


def server_workers() -> tuple[str, int, bool] | None:
    """(server, worker count, in the master process) under gunicorn, uWSGI or uvicorn, else ``None``."""
    uwsgi = sys.modules.get("uwsgi")
    if uwsgi is not None:
        return "uWSGI", int(getattr(uwsgi, "numproc", 1)), int(getattr(uwsgi, "worker_id", lambda: 1)()) == 0
    if "gunicorn" in sys.modules:
        found = _gunicorn(sys._getframe(1))
        if found is not None:
            return found
    if "uvicorn" in sys.modules:
        return _uvicorn(sys._getframe(1))
    return None


def _gunicorn(frame: FrameType | None) -> tuple[str, int, bool] | None:
    # gunicorn keeps its settings on the arbiter, the application and the
    # worker; some of them are on the current stack whenever the app is being
    # loaded or a worker forked. The master is the process whose stack holds
    # the arbiter but no worker: with --preload the app loads inside
    # ``Arbiter.setup`` (under the application's frames, which carry a cfg
    # too), and a forked worker's stack still holds ``Arbiter.spawn_worker``.
    workers: int | None = None
    arbiter = worker = False
    while frame is not None:
        owner = frame.f_locals.get("self")
        module = type(owner).__module__
        if module.startswith("gunicorn."):
            cfg = getattr(owner, "cfg", None)
            if workers is None and cfg is not None and hasattr(cfg, "workers"):
                workers = int(cfg.workers)
            if module.startswith("gunicorn.workers.") or frame.f_code.co_name == "spawn_worker":
                worker = True
            elif type(owner).__name__ == "Arbiter":
                arbiter = True
        frame = frame.f_back
    if workers is None:
        return None
    return "gunicorn", workers, arbiter and not worker


def _uvicorn(frame: FrameType | None) -> tuple[str, int, bool] | None:
    # ``uvicorn --workers N`` spawns (not forks) N processes; each imports the app inside
    # ``Config.load``, under its server's frames, which hold the config. The supervisor
    # never loads the app.
    while frame is not None:
        owner = frame.f_locals.get("self")
        if type(owner).__module__.startswith("uvicorn."):
            config = owner if hasattr(owner, "workers") else getattr(owner, "config", None)
            workers = getattr(config, "workers", None)
            if isinstance(workers, int):
                return "uvicorn", workers, False
        frame = frame.f_back
    return None


def warn_if_per_process(shared: bool, *, forked: bool) -> None:
    """Log the per-process WARNING when state would silently diverge between processes."""
    if shared:
        return
    server = server_workers()
    if server is not None:
        name, workers, in_master = server
        if workers < 2 or in_master:
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
