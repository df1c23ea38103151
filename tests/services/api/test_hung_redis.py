"""A hung Redis (SIGSTOP) never stalls inference: ``/status`` and ``/readyz`` answer from
the status cache, ``/v1/act`` keeps answering within a second while 60 ``/status``
calls are in flight, and ``/status`` says Redis is unreachable.

Runs a redis-server of its own on a free port (the shared one is never touched).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from services.api.app import create_app
from shared.bench_api import sample_act_payload
from shared.registry import Registry
from tests.helpers import LiveServer, listening_socket, wait_for
from tests.services.api.test_api import make_config, save_tiny

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")


def _own_redis(tmp: Path) -> tuple[subprocess.Popen, str]:
    with listening_socket() as sock:  # a port free right now
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_timeout=1)
    assert wait_for(lambda: _pings(client), 10), "redis-server did not start"
    client.close()
    return process, url


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def test_inference_and_health_answer_while_redis_hangs(tmp_path):
    process, url = _own_redis(tmp_path)
    config = make_config(tmp_path, "hung", redis_url=url, api_status_refresh_s=0.3, api_status_timeout_s=0.3)
    registry = Registry(config.pipeline.database_url)
    registry.ensure_run("test", "EURUSD", {})
    path, sha = save_tiny(tmp_path, 1, config)
    registry.set_best(registry.add_checkpoint("test", 1, path, sha), path)
    app = create_app(config, poll_interval_s=60.0, device="cpu")
    payload = sample_act_payload()
    stopped = False
    try:
        with LiveServer(app) as client:
            assert client.get("/readyz").status_code == 200
            assert client.post("/v1/act", json=payload).status_code == 200  # warm
            os.kill(process.pid, signal.SIGSTOP)
            stopped = True
            with ThreadPoolExecutor(64) as pool, httpx.Client(base_url=client.base_url, timeout=30) as other:
                flood = [pool.submit(other.get, "/status") for _ in range(60)]
                flood += [pool.submit(other.get, "/readyz") for _ in range(4)]
                latencies = []
                for _ in range(5):
                    start = time.perf_counter()
                    act = client.post("/v1/act", json=payload)
                    latencies.append(time.perf_counter() - start)
                    assert act.status_code == 200, act.text
                assert max(latencies) < 1.0, latencies
                assert all(f.result().status_code in (200, 503) for f in flood)

            def redis_reported() -> dict | None:
                status = client.get("/status").json()
                return status if "redis" in status["errors"] else None

            status = wait_for(redis_reported, 10)
            assert status, client.get("/status").text
            assert status["errors"]["redis"].startswith(("unreachable", "stale")), status["errors"]
            assert "database" not in status["errors"] and status["served_model"]["step"] == 1
            start = time.perf_counter()
            ready = client.get("/readyz")
            assert time.perf_counter() - start < 0.5
            assert ready.status_code == 503 and not ready.json()["checks"]["redis"]["ok"]
            assert ready.json()["checks"]["model"]["ok"] and ready.json()["checks"]["database"]["ok"]

            os.kill(process.pid, signal.SIGCONT)
            stopped = False
            assert wait_for(lambda: client.get("/readyz").status_code == 200, 10)  # recovers by itself
    finally:
        if stopped:
            os.kill(process.pid, signal.SIGCONT)
        process.terminate()
        process.wait(10)
        registry.close()
