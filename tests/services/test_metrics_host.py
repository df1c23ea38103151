"""The services' /metrics listen on loopback unless ``pipeline.metrics_host`` says otherwise."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

from services.common import start_metrics
from shared.config import Config


def _listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses in LISTEN state on `port`, from /proc/net/tcp."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def test_metrics_bind_loopback_by_default(caplog):
    assert Config().pipeline.metrics_host == "127.0.0.1"
    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with caplog.at_level("INFO", logger="services.common"):
        start_metrics(port, 9999, Config().pipeline.metrics_host)
    assert _listening_addresses(port) == {"127.0.0.1"}
    assert f"metrics on http://127.0.0.1:{port}/metrics" in caplog.text
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
