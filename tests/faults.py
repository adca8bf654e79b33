"""A small TCP proxy that drops and stalls PostgreSQL connections at random.

Workers connect through it; the test's own connections go straight to the
server. Chaos runs for a bounded number of events, then the proxy forwards
cleanly so the job can finish.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Link:
    client: socket.socket
    server: socket.socket
    go: threading.Event = field(default_factory=threading.Event)  # cleared while stalled
    closed: bool = False

    def close(self) -> None:
        self.closed = True
        self.go.set()
        for s in (self.client, self.server):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


class ChaosProxy:
    def __init__(self, upstream: tuple[str, int] | str, seed: int = 1) -> None:
        self.upstream = upstream  # (host, port) or a unix socket path
        self.rng = random.Random(seed)
        self.links: list[Link] = []
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.running = True
        self.dropped = 0
        self.stalled = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _connect_upstream(self) -> socket.socket:
        if isinstance(self.upstream, str):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(self.upstream)
            return s
        return socket.create_connection(self.upstream)

    def _accept(self) -> None:
        while self.running:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = self._connect_upstream()
            except OSError:
                client.close()
                continue
            link = Link(client, server)
            link.go.set()
            with self.lock:
                self.links.append(link)
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(link, src, dst), daemon=True).start()

    def _pump(self, link: Link, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not link.closed:
                data = src.recv(65536)
                if not data:
                    break
                link.go.wait()
                dst.sendall(data)
        except OSError:
            pass
        link.close()

    def chaos(self, events: int, every: tuple[float, float] = (0.3, 1.0), stall: tuple[float, float] = (0.5, 2.0)) -> None:
        """Drop or stall a random live connection, ``events`` times (blocking)."""
        for _ in range(events):
            time.sleep(self.rng.uniform(*every))
            deadline = time.monotonic() + 30
            while True:  # every event hits a connection: wait for the workers to reconnect if none is live
                with self.lock:
                    live = [link for link in self.links if not link.closed]
                if live or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            if not live:
                continue
            link = self.rng.choice(live)
            if self.rng.random() < 0.5:
                self.dropped += 1
                link.close()
            else:
                self.stalled += 1
                link.go.clear()
                threading.Timer(self.rng.uniform(*stall), link.go.set).start()

    def close(self) -> None:
        self.running = False
        self.listener.close()
        with self.lock:
            for link in self.links:
                link.close()
