"""tests/ports.py: the servers' ports come from below the kernel's ephemeral range, free when picked."""

from __future__ import annotations

import socket
from pathlib import Path

from tests import ports


def test_a_port_is_below_the_ephemeral_range_and_free():
    low = ports.ephemeral_low()
    for _ in range(20):
        port = ports.free_port()
        if low is not None and low - ports.LOWEST >= 1_000:
            assert ports.LOWEST <= port < low
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # nothing holds it


def test_a_port_held_is_never_picked(monkeypatch):
    """The port a listener holds is drawn first and passed over."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        monkeypatch.setattr(ports, "LOWEST", taken - 5_000)
        monkeypatch.setattr(ports, "ephemeral_low", lambda: taken + 2)
        monkeypatch.setattr(ports, "_rng", _Draws([taken, taken + 1]))  # the held port first, then its neighbour
        assert ports.free_port() == taken + 1


def test_without_room_below_the_range_or_a_readable_range_the_kernel_picks(tmp_path: Path, monkeypatch):
    assert ports.ephemeral_low(tmp_path / "missing") is None
    (tmp_path / "range").write_text("1024\t65535\n")
    assert ports.ephemeral_low(tmp_path / "range") == 1024
    monkeypatch.setattr(ports, "ephemeral_low", lambda: 1024)
    port = ports.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


class _Draws:
    def __init__(self, draws: list[int]) -> None:
        self.draws = iter(draws)

    def randrange(self, lo: int, hi: int) -> int:
        port = next(self.draws)
        assert lo <= port < hi
        return port
