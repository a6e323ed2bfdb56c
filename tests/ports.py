"""Free loopback ports for the servers a test starts."""

from __future__ import annotations

import contextlib
import socket


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports nothing listens on.

    Each port is held until all are chosen: a port closed before the next is asked for may come back
    again, and two servers on one port make the second fail to bind while the first answers for it
    (a Redis answering curl's request shuts the connection: an empty reply).
    """
    with contextlib.ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def free_port() -> int:
    return free_ports(1)[0]
