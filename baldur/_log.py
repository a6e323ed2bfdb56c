"""The ``baldur`` logger, its stable events, and the folding of floods.

Baldur never calls ``logging.basicConfig`` and never touches the root logger.
When nothing would print a ``baldur`` record (no handler on ``baldur`` or any
ancestor), ``configure`` adds one stdout handler to ``baldur`` only.

An event is a stable name (``circuit.opened``) and fields. A flood of the
same event for the same key prints at most one line per second; the next line
says how many were folded into it (``folded=N``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from typing import Any

__all__ = ["EVENTS", "configure", "emit"]

ROOT = "baldur"
#: Stable event names → the child logger that carries them.
EVENTS = {
    "circuit.opened": "baldur.circuit",
    "circuit.half_open": "baldur.circuit",
    "circuit.closed": "baldur.circuit",
    "ratelimit.blocked": "baldur.ratelimit",
    "backpressure.shed": "baldur.backpressure",
    "store.degraded": "baldur.store",
    "store.recovered": "baldur.store",
    "idempotency.replayed": "baldur.idempotency",
    "idempotency.conflict": "baldur.idempotency",
    "store.per_process": "baldur.store",
    "store.ready": "baldur.store",
    "admin.change": "baldur.admin",
}
_FOLD_SECONDS = 1.0
_FOLD_MAX_KEYS = 10_000

_lock = threading.Lock()
#: (event, key) → [time of the last printed line, records folded since]
_folds: dict[tuple[str, str], list[float]] = {}
_own_handler: logging.Handler | None = None


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # a thread of the parent, absent here, may have held it


os.register_at_fork(after_in_child=_after_fork_in_child)


#: Characters that would end or forge a log line: C0 and C1 controls, DEL, the Unicode line breaks.
_UNPRINTABLE = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_UNPRINTABLE.update({0x2028: "\\u2028", 0x2029: "\\u2029", ord("\\"): "\\\\"})


def escape(text: str) -> str:
    """``text`` on one line: a client-controlled value (a path, a key) can never forge a log line."""
    return text.translate(_UNPRINTABLE)


class _TextFormatter(logging.Formatter):
    """One line per record: the message and every field escaped (a traceback, ours, keeps its lines)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "baldur", None) or {}
        line = super().format(record)
        extra = " ".join(f"{escape(str(k))}={escape(str(v))}" for k, v in fields.items() if k != "event")
        return f"{line} {extra}" if extra else line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        doc.update(getattr(record, "baldur", None) or {})
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


#: The level Baldur itself last set on the ``baldur`` logger.
_our_level: int | None = None


def configure(level: str, fmt: str) -> None:
    """Set the ``baldur`` level (unless the host app set its own); add a stdout handler
    only if nothing would print a ``baldur`` record (configure logging before ``init``)."""
    global _own_handler, _our_level
    logger = logging.getLogger(ROOT)
    if logger.level in (logging.NOTSET, _our_level):
        logger.setLevel(level)
        _our_level = logger.level
    formatter = _JsonFormatter() if fmt == "json" else _TextFormatter()
    if _own_handler is not None:
        _own_handler.setFormatter(formatter)
        return
    if logger.hasHandlers():
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    logger.addHandler(handler)
    _own_handler = handler


def emit(event: str, key: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``event`` for ``key`` unless the same pair printed less than a second ago."""
    logger = logging.getLogger(EVENTS[event])
    if not logger.isEnabledFor(level):
        return
    now = time.monotonic()
    with _lock:
        fold = _folds.get((event, key))
        if fold is not None and now - fold[0] < _FOLD_SECONDS:
            fold[1] += 1
            return
        folded = 0 if fold is None else int(fold[1])
        if len(_folds) >= _FOLD_MAX_KEYS:
            _folds.clear()
        _folds[(event, key)] = [now, 0]
    payload = {"event": event, "name": key, **fields}
    if folded:
        payload["folded"] = folded
    logger.log(level, event, extra={"baldur": payload})
