"""Idempotency pieces every web adapter shares: which requests may carry a key, which
answers are stored and how, whose they are, and the bound on what one identity stores.

Framework-neutral: functions of strings, numbers and bytes.
"""

from __future__ import annotations

import base64
import json
import logging
import math
from collections.abc import Callable, Iterable
from typing import TypeVar

from baldur._config import Settings
from baldur._idempotency import fingerprint
from baldur.adapters._http import PROBLEM_JSON
from baldur.policies.rate_limit import RateLimit

__all__ = ["IDEMPOTENT_METHODS", "NEVER_STORED", "UNSAFE_HEADERS", "chosen_key", "credentials_identity",
           "record", "records_per_identity", "replayed", "too_large"]

Req = TypeVar("Req")

IDEMPOTENT_METHODS = ("POST", "PATCH")
#: Response headers never replayed: per-response, per-connection, or a credential.
UNSAFE_HEADERS = frozenset({"set-cookie", "date", "server", "content-length", "connection", "keep-alive",
                            "transfer-encoding", "ratelimit", "ratelimit-policy"})
#: Answers never stored for replay: the request was not authorised, or not admitted.
NEVER_STORED = frozenset({401, 403, 407, 429})


def records_per_identity(settings: Settings) -> RateLimit | None:
    """New stored responses per identity per TTL: bounds what one identity keeps in the store."""
    if not settings.idempotency_max_records:
        return None
    return RateLimit(f"{settings.idempotency_max_records}/{max(1, math.ceil(settings.idempotency_ttl))}second",
                     setting="BALDUR_IDEMPOTENCY_MAX_RECORDS")


def record(status: int, headers: Iterable[tuple[str, str]], body: bytes) -> str:
    """A response as the store keeps it for replay: its status, safe headers and body."""
    safe = [[name, value] for name, value in headers if name.lower() not in UNSAFE_HEADERS]
    return json.dumps({"status": status, "headers": safe, "body": base64.b64encode(body).decode()})


def replayed(stored: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, headers, body) of a stored response, marked ``Idempotent-Replayed``."""
    data = json.loads(stored)
    headers = [(str(name), str(value)) for name, value in data["headers"]]
    headers.append(("Idempotent-Replayed", "true"))
    return int(data["status"]), headers, base64.b64decode(data["body"])


def too_large(instance: str, cap: int) -> tuple[int, dict[str, str], bytes]:
    body = {"type": "about:blank", "title": "Content Too Large", "status": 413, "instance": instance,
            "detail": f"a request with an Idempotency-Key may carry at most {cap} bytes "
                      "(BALDUR_IDEMPOTENCY_MAX_BYTES)"}
    return 413, {"Content-Type": PROBLEM_JSON}, json.dumps(body).encode()


def credentials_identity(authorization: str, session_cookie: str, client: str) -> str:
    """The default identity: a hash of the credentials the request carries and its client key."""
    return "cred:" + fingerprint(authorization, session_cookie, client)


def chosen_key(func: Callable[[Req], object] | None, request: Req, path: str, what: str,
               logger: logging.Logger) -> str | None:
    """What the app's ``key_func``/``identity`` callable says for ``request``, or ``None`` when it
    has nothing to say (not set, returned nothing, or the request lacks what it reads)."""
    if func is None:
        return None
    try:
        key = func(request)
    except LookupError as exc:  # KeyError, IndexError: the request lacks what the callable reads
        logger.debug("%s raised %r for %s: falling back to the default", what, exc, path)
        return None
    if key is None or key == "":
        logger.debug("%s returned nothing for %s: falling back to the default", what, path)
        return None
    return str(key)
