"""Small builders shared by tests: markets from synthetic closes, no database needed."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from shared.config import Config
from shared.data.bars import Bars
from shared.market import MarketData, market_from_bars


def random_walk_bars(n: int = 3000, seed: int = 0, step_pips: float = 5.0, start="2020-01-05T22:00") -> Bars:
    rng = np.random.default_rng(seed)
    close = 1.1 + np.cumsum(rng.normal(0, step_pips * 1e-4, n))
    ts = np.datetime64(start, "ns") + np.arange(n) * np.timedelta64(1, "h")
    return Bars.from_arrays(ts, close, close, close, close)


def random_walk_market(n: int = 3000, seed: int = 0, config: Config | None = None) -> MarketData:
    return market_from_bars("EURUSD", random_walk_bars(n, seed), config or Config())


REPO = Path(__file__).resolve().parents[1]


def listening_socket(host: str = "127.0.0.1") -> socket.socket:
    """A TCP socket bound to port 0 (the OS picks a free port) and listening: hand it to
    the server, so no other process can take the port between picking and binding."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(128)
    return sock


class LiveServer:
    """uvicorn serving an ASGI `app` in a background thread, on a socket bound to port 0."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.sock = listening_socket()
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Any:
        import httpx

        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        self.client = httpx.Client(base_url=self.url, timeout=30)
        return self.client

    def __exit__(self, *exc: object) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


def wait_for(predicate: Any, timeout: float = 10.0, every: float = 0.05) -> Any:
    """Poll `predicate` until it is truthy or `timeout` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)
