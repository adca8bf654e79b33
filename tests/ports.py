"""Ports for the servers the tests start: PostgreSQL and Citus nodes, a standby, PgBouncer, the pool's
metrics and web pages.

A port from ``bind(("127.0.0.1", 0))`` comes from the kernel's ephemeral range, the range every outgoing
connection takes its source port from. Freed before the server binds it, and free again while a node
restarts (tests/test_citus.py restarts its worker nodes under a pool that is reconnecting), it can be
taken as the source port of one of the suite's many client connections; the server then fails to bind
("Address already in use"). So the tests pick ports below that range, which outgoing connections never
take, and check that nothing holds the one picked.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST = 10_000  # below the usual service ports' crowd; well below the usual ephemeral range (32768-60999)
_rng = random.SystemRandom()  # each pytest-xdist process its own draws


def ephemeral_low(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> int | None:
    """The first port of the kernel's ephemeral range, or None where it cannot be read."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def free_port() -> int:
    """A port nothing on 127.0.0.1 holds now, outside the ephemeral range where there is room below it."""
    low = ephemeral_low()
    if low is not None and low - LOWEST >= 1_000:
        for _ in range(100):
            port = _rng.randrange(LOWEST, low)
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as s:  # no room below the range (or no /proc): the kernel's pick
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
