"""``microzero up`` supervises: the trainer SIGKILLed under it is restarted (log line,
restart count in the status line and in ``/status``), resumes from its checkpoint, and
the pipeline goes on; the embedded Redis keeps an append-only file under ``var/`` and,
SIGKILLed, is restarted on the same socket, and the pipeline goes on again; Ctrl-C
still stops everything. Same small configuration as ``test_up.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.test_up import _config, _processes_mentioning

pytestmark = pytest.mark.slow


def _trainer_pid(config_file: Path) -> int | None:
    for pid in _processes_mentioning(str(config_file)):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"trainer" in argv and b"up" not in argv:
            return pid
    return None


@pytest.mark.timeout(300)
def test_up_restarts_a_killed_trainer_and_the_pipeline_goes_on(tmp_path):
    config_file = _config(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MZ_") and k != "REDIS_URL"}
    log_path = tmp_path / "up.log"
    with open(log_path, "w") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "--config", str(config_file), "up", "--status-every", "1"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def fail(why: str):
        pytest.fail(f"{why}\n--- microzero up log (tail) ---\n{log_path.read_text()[-6000:]}")

    def wait(predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while True:
            if up.poll() is not None:
                fail(f"microzero up exited (code {up.returncode}) while waiting for {what}")
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                fail(f"timed out waiting for {what}")
            time.sleep(0.5)

    client = httpx.Client(timeout=10)
    try:
        port = int(
            wait(
                lambda: re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", log_path.read_text()),
                180,
                "the API",
            ).group(1)
        )
        client.base_url = httpx.URL(f"http://127.0.0.1:{port}")

        def status() -> dict:
            try:
                return client.get("/status").json()
            except (httpx.HTTPError, ValueError):
                return {}

        def trainer_step() -> int:
            return (status().get("trainer") or {}).get("step", 0)

        wait(lambda: trainer_step() >= 25, 180, "a checkpoint (learner step 25)")
        services = wait(lambda: status().get("services"), 30, "the services in /status")
        assert services["trainer"]["restarts"] == 0 and services["trainer"]["running"]
        pid = _trainer_pid(config_file)
        assert pid == services["trainer"]["pid"]
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()

        wait(lambda: "trainer exited (killed by SIGKILL)" in log_path.read_text(), 30, "the exit log line")
        wait(lambda: "trainer restarted (pid" in log_path.read_text(), 30, "the restart log line")
        restarted = wait(
            lambda: (status().get("services") or {}).get("trainer", {}).get("restarts") == 1, 30, "/status"
        )
        assert restarted
        # The restarted trainer resumes from its checkpoint and learns on.
        wait(
            lambda: ((status().get("trainer") or {}).get("resumed_from") or 0) >= 20 and trainer_step() >= 45,
            150,
            "the restarted trainer to resume and learn",
        )
        print(f"trainer back and learning {time.monotonic() - killed_at:.1f} s after SIGKILL")
        assert re.search(r"\| restarts trainer 1", log_path.read_text())  # the status line
        new = status()["services"]
        assert new["trainer"]["pid"] != pid and new["trainer"]["last_exit_code"] == -signal.SIGKILL
        assert all(s["running"] and s["restarts"] == 0 for name, s in new.items() if name != "trainer")
        assert (tmp_path / "var" / "appendonly.aof").exists()  # the embedded Redis persists

        # The embedded Redis dies: up starts it again (same socket, same AOF), and on it goes.
        settings = json.loads((tmp_path / "var" / "redis.db.settings").read_text())
        redis_pid = int(Path(settings["pidfile"]).read_text())
        step = trainer_step()
        os.kill(redis_pid, signal.SIGKILL)
        wait(lambda: "embedded Redis restarted" in log_path.read_text(), 30, "the embedded Redis restart")
        wait(lambda: trainer_step() >= step + 10, 120, "the trainer to learn on after the Redis restart")
        wait(lambda: "embedded Redis restarts 1" in log_path.read_text(), 30, "the status line's Redis restart")
        assert int(Path(settings["pidfile"]).read_text()) != redis_pid
        new = status()["services"]
        assert all(s["running"] for s in new.values()), new
    finally:
        client.close()
        if up.poll() is None:
            up.send_signal(signal.SIGINT)
        try:
            code = up.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            code = None
        leftovers = _processes_mentioning(str(config_file))
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert code == 0, log_path.read_text()[-3000:]
    assert not leftovers, f"processes still running after Ctrl-C: {leftovers}"
