"""Baldur's admin API and Web Console (issue 12): see and steer every breaker and limit.

``baldur admin`` (or ``python -m baldur.admin``) serves it standalone with
uvicorn (``pip install 'baldur-framework[admin]'``); ``init_flask(app,
admin="/_baldur")`` mounts it in a Flask app. Only ``serve`` is public here.
"""

from __future__ import annotations

import sys

__all__ = ["serve"]


def serve(addr: str | None = None) -> int:
    """Serve the admin API and the console on ``addr`` (default ``BALDUR_ADMIN_ADDR``,
    ``127.0.0.1:9180``) until stopped; the exit status: 2 when it cannot serve (no key
    configured, a bad setting, uvicorn missing), and why goes to stderr."""
    import baldur
    from baldur._config import _admin_addr
    from baldur.errors import ConfigError

    try:
        runtime = baldur.init()
        address = runtime.settings.admin_addr if addr is None else _admin_addr("--addr", addr, "127.0.0.1:9180")
    except ConfigError as exc:
        print(f"baldur admin: {exc}", file=sys.stderr)
        return 2
    if not runtime.settings.admin_keys:
        print("baldur admin: refusing to serve: no admin key is configured. Set BALDUR_ADMIN_KEYS to "
              "role:key entries (roles viewer, operator, admin; keys of 16 characters or more), e.g. "
              "BALDUR_ADMIN_KEYS=@/etc/baldur/admin-keys", file=sys.stderr)
        return 2
    try:
        import uvicorn
    except ImportError:
        print("baldur admin: the standalone admin server needs uvicorn: pip install -e '.[admin]' in a checkout "
              "of Baldur, or pip install 'uvicorn>=0.30'", file=sys.stderr)
        return 2
    from baldur.admin._asgi import AdminASGI

    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not runtime.shared:
        print("baldur admin: note: the store is this process's memory (BALDUR_REDIS_URL is not set): it sees "
              "no other process's breakers; point it at the app's Redis to see and steer the fleet",
              file=sys.stderr)
    config = uvicorn.Config(AdminASGI(), host=host, port=int(port), log_level="warning", lifespan="off",
                            server_header=False, proxy_headers=False, access_log=False)
    print(f"baldur admin: serving the admin API and console on http://{address}/", file=sys.stderr, flush=True)
    uvicorn.Server(config).run()
    return 0
