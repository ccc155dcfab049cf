"""Loopback ports for the tests' servers: one implementation for every fixture.

Binding port 0 and closing the socket gives a port free *now*; the kernel may give the same
port to the next such bind, and a test that asks twice in a row (a proxy port and an admin port,
say) then hands one server both. This process never hands out a port twice.
"""

from __future__ import annotations

import socket

__all__ = ["free_port"]

_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, never returned before by this process."""
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no loopback port left that this test process has not handed out")
