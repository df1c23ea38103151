"""`docker compose up`, end to end: the shipped image and compose file, really run.

Marker `docker`, left out of the default run; ``pytest -m docker tests/integration/test_compose.py``
(`.ci/run` does, after the unit suite). The stack runs as a compose project of its own
(its own volumes, ports the OS picked, published on 127.0.0.1) with a small model and a
checkpoint every 20 learner steps, set through the services' environment by an override
file: it proves the wiring, not the learning. Grafana is left out where its image is not
present (no registry is reachable on some machines); every query of its dashboard is run
against the stack's Prometheus instead.

Without a Docker engine with Compose v2 the tests are skipped and say why;
``MZ_TEST_DOCKER=required`` makes that a failure (`.ci/run` sets it once the engine runs).
``TORCH_INDEX`` (environment) is passed to the image build; unset = the Dockerfile's CPU index.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from shared.bench_api import sample_act_payload
from tests.helpers import REPO

# The first test also builds the image and starts the stack (module fixture): minutes.
pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]

PROJECT = "mz-e2e"
IMAGE = "microzero-e2e:test"
GRAFANA_IMAGE = "grafana/grafana:11.4.0"
APP_SERVICES = ("collector", "trainer", "validator", "api")
SMALL = {  # the settings of tests/integration/test_up.py: seconds per checkpoint and validation
    "MZ_MODEL__TCN_CHANNELS": "8",
    "MZ_MODEL__HIDDEN": "32",
    "MZ_MODEL__HEAD_HIDDEN": "16",
    "MZ_MODEL__ENCODER_HIDDEN": "16",
    "MZ_MODEL__RESIDUAL_BLOCKS": "1",
    "MZ_SEARCH__NUM_SIMULATIONS": "2",
    "MZ_ENV__EPISODE_LENGTH": "60",
    "MZ_LEARNING__MIN_REPLAY_POSITIONS": "300",
    "MZ_LEARNING__BATCH_SIZE": "16",
    "MZ_LEARNING__SAMPLES_PER_INSERT": "2",
    "MZ_LEARNING__SAMPLES_PER_INSERT_TOLERANCE": "1000",
    "MZ_TRAIN__NUM_ENVS": "4",
    "MZ_TRAIN__CHECKPOINT_EVERY": "20",
    "MZ_PIPELINE__VALIDATION_CHUNKS": "4",
}
TIMINGS: dict[str, float] = {}


def _run(args: list[str], timeout: float, env: dict[str, str] | None = None, check: bool = True) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    if check and result.returncode != 0:
        raise AssertionError(
            f"`{' '.join(args)}` exited {result.returncode}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    return result.stdout + result.stderr


def _engine_problem() -> str | None:
    """Why no compose stack can run here, or None."""
    for args, why in (
        (["docker", "info"], "no Docker engine answers (`docker info` failed)"),
        (["docker", "compose", "version"], "no Compose v2 (`docker compose version` failed)"),
    ):
        try:
            if subprocess.run(args, capture_output=True, timeout=30).returncode != 0:
                return why
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{why}: {exc}"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _until(what: str, probe: Callable[[], Any], timeout: float, every: float = 3.0) -> Any:
    """Poll `probe` until it returns something truthy; fail naming `what` and the last value."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if last and not isinstance(last, str):
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:.0f} s; last: {last}")


class Stack:
    def __init__(self, workdir: Path) -> None:
        self.api_port, self.prometheus_port = _free_port(), _free_port()
        self.env = dict(
            os.environ,
            REDIS_PASSWORD=secrets.token_hex(12),
            POSTGRES_PASSWORD=secrets.token_hex(12),
            GRAFANA_ADMIN_PASSWORD=secrets.token_hex(12),
            API_TOKEN=secrets.token_hex(12),
            MZ_BIND="127.0.0.1",
            API_PORT=str(self.api_port),
            PROMETHEUS_PORT=str(self.prometheus_port),
            MICROZERO_IMAGE=IMAGE,
        )
        override = workdir / "small.yml"  # environment maps merge with the compose file's
        override.write_text(json.dumps({"services": {name: {"environment": SMALL} for name in APP_SERVICES}}))
        self.files = ["-f", str(REPO / "docker-compose.yml"), "-f", str(override)]
        compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
        grafana = _run(["docker", "image", "inspect", GRAFANA_IMAGE], 60, check=False).lstrip().startswith("[{")
        self.services = [s for s in compose["services"] if s != "grafana" or grafana]
        self.api = httpx.Client(base_url=f"http://127.0.0.1:{self.api_port}", timeout=30)
        self.prometheus = httpx.Client(base_url=f"http://127.0.0.1:{self.prometheus_port}", timeout=30)

    def compose(self, *args: str, timeout: float = 900) -> str:
        return _run(["docker", "compose", "-p", PROJECT, *self.files, *args], timeout, env=self.env)

    def up(self) -> None:
        self.compose("up", "-d", "--no-build", "--wait", "--wait-timeout", "600", *self.services)

    def status(self) -> dict[str, Any]:
        return self.api.get("/status").raise_for_status().json()


@contextmanager
def _timed(name: str) -> Iterator[None]:
    start = time.monotonic()
    try:
        yield
    finally:
        TIMINGS[name] = time.monotonic() - start


@pytest.fixture(scope="module")
def engine() -> None:
    problem = _engine_problem()
    if problem:
        message = f"docker compose end-to-end test not run: {problem}"
        if os.environ.get("MZ_TEST_DOCKER") == "required":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def stack(engine, tmp_path_factory, request) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("compose"))
    build = ["docker", "build", "-f", "services/Dockerfile", "-t", IMAGE, "."]
    if "TORCH_INDEX" in os.environ:
        build[2:2] = ["--build-arg", f"TORCH_INDEX={os.environ['TORCH_INDEX']}"]
    stack.compose("down", "-v", "--remove-orphans", timeout=300)  # leftovers of an interrupted run
    try:
        with _timed("build the image"):
            _run(build, 1800)
        with _timed("up -d --wait (first)"):
            stack.up()
        yield stack
    finally:
        logs = stack.compose("logs", "--no-color", "--tail", "40", timeout=120) if request.session.testsfailed else ""
        with _timed("down -v"):
            stack.compose("down", "-v", "--remove-orphans", timeout=600)
        left = _run(["docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"], 60)
        lines = [f"[compose e2e] {name}: {seconds:.0f} s" for name, seconds in TIMINGS.items()] + [logs]
        plugins = request.config.pluginmanager
        with plugins.getplugin("capturemanager").global_and_fixture_disabled():  # shown with -q too
            plugins.getplugin("terminalreporter").write("\n" + "\n".join(lines))
        assert not left.strip(), f"`down -v` left volumes: {left}"


def test_image_build_fails_when_the_torch_index_is_unreachable(engine) -> None:
    """No silent fallback to PyPI's CUDA wheel (or anything else the base image offers)."""
    result = subprocess.run(
        ["docker", "build", "--force-rm", "-f", "services/Dockerfile", "--target", "build", "--build-arg",
         "TORCH_INDEX=http://127.0.0.1:9/simple", "-t", "microzero-e2e:unreachable", "."],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert result.returncode != 0, "the build succeeded without its torch index"
    assert "torch==2.13.0" in result.stdout + result.stderr


def test_collectors_push_a_checkpoint_is_validated_and_served(stack: Stack) -> None:
    def validated() -> dict[str, Any] | str:
        s = stack.status()
        pushing = [c for c in s["collectors"] if (c["episodes"] or 0) > 0]
        done = len(pushing) >= 2 and (s["trainer"] or {}).get("episodes_inserted") and s["best_checkpoint"]
        return s if done else str(s)

    with _timed("a checkpoint validated (after up)"):
        status = _until("two collectors pushing, a checkpoint validated and promoted to best", validated, 900)
    assert status["checkpoints_total"] >= 1 and not status["errors"], status
    validations = stack.api.get("/validations").json()["items"]
    assert any(v["status"] == "ok" for v in validations), validations

    def act() -> dict[str, Any] | str:
        # The stack keeps training and promoting while this runs: the answer must come from
        # the best checkpoint of just before or just after it, not from the best seen above.
        before = stack.status()["best_checkpoint"]["id"]
        answer = stack.api.post("/v1/act", json=sample_act_payload(side=1))
        after = stack.status()["best_checkpoint"]["id"]
        good = answer.status_code == 200 and answer.json()["checkpoint_id"] in (before, after)
        return answer.json() if good else f"{answer.status_code} {answer.text} (best {before}, then {after})"

    answer = _until("/v1/act answered by the best checkpoint at answer time", act, 60)
    assert answer["action"] != "BUY" and "BUY" not in answer["legal_actions"]  # long already

    processes = stack.compose("top", timeout=120)  # every process of every container, arguments included
    assert "redis-server" in processes, processes  # (it rewrites its title to "redis-server *:6379")
    for secret in ("REDIS_PASSWORD", "POSTGRES_PASSWORD", "API_TOKEN"):
        assert stack.env[secret] not in processes, f"${secret} shows in a process's arguments"


def _panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads((REPO / "deploy/grafana/dashboards/microzero.json").read_text())
    panels = [p for row in dashboard["panels"] for p in (row.get("panels", []) if row["type"] == "row" else [row])]
    # Grafana's own variables, as it would fill them in for the default hour-long view.
    return [
        (p["title"], t["expr"].replace("$__rate_interval", "1m").replace("$__range", "1h"))
        for p in panels
        for t in p["targets"]
    ]


def test_prometheus_scrapes_every_service_and_every_panel_has_data(stack: Stack) -> None:
    def targets() -> dict[str, list[str]] | str:
        active = stack.prometheus.get("/api/v1/targets").json()["data"]["activeTargets"]
        health: dict[str, list[str]] = {}
        for t in active:
            health.setdefault(t["labels"]["job"], []).append(t["health"])
        ok = set(health) >= {*APP_SERVICES, "prometheus"} and len(health["collector"]) == 2
        return health if ok and all(h == "up" for hs in health.values() for h in hs) else str(health)

    _until("every scrape target up (two collectors)", targets, timeout=120)

    def empty() -> list[str]:
        found = []
        for title, expr in _panel_queries():
            result = stack.prometheus.get("/api/v1/query", params={"query": expr}).json()
            assert result["status"] == "success", (title, expr, result)
            if not result["data"]["result"]:
                found.append(f"{title}: {expr}")
        return found

    with _timed("every dashboard query has a series"):
        _until("every dashboard query returning a series", lambda: not (e := empty()) or "; ".join(e), timeout=180)


def test_a_restarted_trainer_resumes_from_its_checkpoint(stack: Stack) -> None:
    before = stack.status()["latest_checkpoint"]["step"]
    with _timed("restart trainer"):
        stack.compose("restart", "trainer")
    trainer = _until(
        "the trainer resumed from its newest checkpoint",
        lambda: (t := stack.status()["trainer"])["resumed_from"] is not None and t["resumed_from"] >= before and t,
        timeout=300,
    )
    assert "trainer resumed from" in stack.compose("logs", "--no-color", "trainer", timeout=120)
    assert trainer["step"] >= trainer["resumed_from"]


def test_down_and_up_keep_the_registry_checkpoints_and_best(stack: Stack) -> None:
    before = stack.status()
    with _timed("down (keeping volumes)"):
        stack.compose("down")
    with _timed("up -d --wait (second)"):
        stack.up()
    after = _until("the API back with its registry", lambda: (s := stack.status())["best_checkpoint"] and s, 120)
    assert after["checkpoints_total"] >= before["checkpoints_total"]
    kept = stack.api.get(f"/checkpoints/{before['best_checkpoint']['id']}").json()
    assert kept["sha256"] == before["best_checkpoint"]["sha256"], kept  # same file, same record
    assert after["best_checkpoint"]["step"] >= before["best_checkpoint"]["step"]
    # Redis kept its data too (AOF on a volume): wait for a status from the new container.
    resumed = _until(
        "the new trainer container resumed",
        lambda: (t := stack.status()["trainer"])["consumer"] != before["trainer"]["consumer"] and t,
        timeout=300,
    )
    assert resumed["resumed_from"] >= before["latest_checkpoint"]["step"]
    assert stack.api.post("/v1/act", json=sample_act_payload(side=0)).status_code == 200
