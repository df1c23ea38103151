"""Faults: Redis stopped (SIGTERM) or killed (SIGKILL) mid-run and restarted, Redis hung
(SIGSTOP) for 10 s, and a trainer killed with SIGKILL.

Each test starts its own ``redis-server`` on a unix socket with AOF (``appendfsync
always``) in ``tmp_path``, so a restart on the same socket keeps the stream, the group
and its pending entries.

The whole-pipeline test (:func:`test_the_pipeline_rides_out_a_redis_fault_and_the_api_keeps_answering`)
runs the collector and trainer in threads and the validator and API as real processes,
and probes ``POST /v1/act`` every 0.2 s through the fault (:class:`ApiProbe`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis
import torch

from services.collector.loop import Collector
from services.trainer.loop import Trainer
from shared.bench_api import sample_act_payload
from shared.config import Config
from shared.learning.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from shared.market import open_market
from shared.model.networks import StochasticMuZeroNet
from shared.registry import Registry
from shared.transport.connection import connect
from shared.transport.jobs import enqueue_validation
from shared.transport.keys import RedisKeys
from shared.transport.streams import EpisodeStream, read_model
from tests.helpers import REPO, wait_for
from tests.services.test_collector_trainer import Worker, sample, tiny_config, wait_until

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.redis, pytest.mark.slow]


class RedisServer:
    """A private redis-server with AOF in `directory`, on a unix socket (no TCP port to
    pick); stop() and start() keep the socket path."""

    def __init__(self, directory: Path) -> None:
        self.binary = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
        assert self.binary, "redis-server is not installed"
        self.directory, self.process = directory, None
        self.socket = directory / "redis.sock"
        self.url = f"unix://{self.socket}?db=0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--daemonize",
                "no",
                "--logfile",
                str(self.directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        probe = redis.Redis(unix_socket_path=str(self.socket), socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                if probe.ping():
                    break
            except (redis.ConnectionError, redis.BusyLoadingError):
                pass
            assert self.process.poll() is None, (self.directory / "redis.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)
        probe.close()

    def hang(self, seconds: float) -> None:
        """SIGSTOP the server for `seconds`, then SIGCONT: connections stay open, nothing
        answers (a hung host or a network partition, as clients see it)."""
        assert self.process is not None and self.process.poll() is None
        self.process.send_signal(signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            self.process.send_signal(signal.SIGCONT)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: Redis fsyncs its AOF and exits; SIGKILL: it dies on the spot (with
        ``appendfsync always`` every acknowledged write is already in the AOF)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(10)
        self.process = None


@pytest.fixture
def server(tmp_path):
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def config(data_dir, tmp_path, server):
    return tiny_config(data_dir, tmp_path, server.url, "mz")


@pytest.fixture
def market(config):
    return open_market(config, config.pipeline.symbol)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_redis_restart_loses_no_episode_and_inserts_none_twice(config, market, server, sig):
    n = 100
    reconnects = {s: sample("microzero_redis_reconnects_total", {"service": s}) for s in ("collector", "trainer")}
    stop_collector, stop_trainer = threading.Event(), threading.Event()
    collector = Collector(
        config,
        stop_collector,
        client=connect(server.url),
        collector_id="faulty",
        market=market,
        seed=1,
        device="cpu",
        max_episodes=n,
        max_lag=8,
    )  # paced by the trainer
    trainer = Trainer(
        config,
        stop_trainer,
        client=connect(server.url),
        market=market,
        on_checkpoint=None,
        seed=0,
        record_ids=True,
        device="cpu",
    )
    collector_worker, trainer_worker = Worker(collector.run, "collector"), Worker(trainer.run, "trainer")
    workers = [collector_worker, trainer_worker]
    for w in workers:
        w.start()
    try:
        # Mid-run: episodes flowing, weights published and played.
        wait_until(lambda: trainer.stats.inserted >= 20, 40, "a running pipeline", workers)
        assert collector.stats.played < n, "the collector finished before the outage; make it slower"
        server.stop(sig)
        down_at = time.monotonic()
        played_at_stop = collector.stats.played
        # Both keep working without Redis: the collector plays into its queue, the trainer learns.
        wait_until(lambda: len(collector.pending) > 0, 20, "episodes queued during the outage", workers)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - down_at)))
        assert collector.outage.down and trainer.outage.down
        queued = len(collector.pending)
        server.start()  # same port, same AOF
        wait_until(lambda: not collector_worker.is_alive(), 40, "the collector to push all its episodes", workers)
        wait_until(lambda: trainer.stats.inserted >= n, 40, "the trainer to insert every episode", workers)
    finally:
        stop_collector.set()
        stop_trainer.set()
        collector_stats = collector_worker.finish()
        stats = trainer_worker.finish()

    produced = collector_stats.episode_ids()
    assert len(produced) == n and collector_stats.dropped == 0 and collector_stats.pushed == n
    assert collector.stats.played > played_at_stop and queued > 0  # played on while Redis was down
    ids = stats.inserted_ids
    assert len(ids) == len(set(ids)), "an episode was inserted twice"
    assert sorted(ids) == sorted(produced), "an episode was lost"
    assert stats.rejected == 0
    for service in ("collector", "trainer"):
        assert sample("microzero_redis_reconnects_total", {"service": service}) > reconnects[service]
    client = connect(server.url)
    stream = EpisodeStream(client, config.pipeline.episode_stream, config.pipeline.stream_maxlen)
    assert stream.pending_count(config.pipeline.consumer_group) == 0  # every entry acked
    assert stream.lag(config.pipeline.consumer_group) == 0
    assert read_model(client, config.pipeline.model_key)["version"] == stats.steps
    client.close()


def _service_process(args: list[str], config_file: Path, server, log_file: Path) -> subprocess.Popen:
    """``python -m <args>`` with `config_file` ($MZ_CONFIG) on `server`, in its own
    process group (the validator's RQ scheduler is its child)."""
    env = dict(os.environ, MZ_CONFIG=str(config_file), REDIS_URL=server.url, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("MZ_PIPELINE__REDIS_URL", None)
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=REPO,
        env=env,
        stdout=log_file.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _trainer_process(config_file: Path, server, log_file: Path) -> subprocess.Popen:
    return _service_process(
        ["services.trainer.main", "--device", "cpu", "--metrics-port", "-1"], config_file, server, log_file
    )


def test_trainer_killed_with_sigkill_resumes_from_its_checkpoint(config, market, server, tmp_path):
    config = config.model_copy(update={"pipeline": config.pipeline.model_copy(update={"redis_url": None})})
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config.model_dump(mode="json")))
    folder = Path(config.pipeline.checkpoints_dir) / config.pipeline.run_id
    log_file = tmp_path / "trainer.log"
    client = connect(server.url)

    stop_collector = threading.Event()
    collector = Collector(
        config, stop_collector, client=connect(server.url), collector_id="feeder", market=market, seed=2, device="cpu"
    )
    feeder = Worker(collector.run, "collector")
    feeder.start()
    first = _trainer_process(config_file, server, log_file)
    second = None
    try:

        def saved_step() -> int:
            latest = latest_checkpoint(folder)
            return 0 if latest is None else load_checkpoint(latest).step

        wait_until(
            lambda: saved_step() >= 10 or first.poll() is not None, 60, "the first trainer's checkpoints", [feeder]
        )
        assert first.poll() is None, log_file.read_text()[-3000:]
        first.send_signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
        saved, saved_path = saved_step(), latest_checkpoint(folder)
        assert saved >= 10

        second = _trainer_process(config_file, server, log_file)

        def status() -> dict:
            raw = client.get(RedisKeys.from_config(config).trainer_status)
            return json.loads(raw) if raw else {}

        wait_until(
            lambda: (
                (status().get("resumed_from") == saved and status().get("step", 0) >= saved + 5)
                or second.poll() is not None
            ),
            60,
            "the restarted trainer to resume and learn",
            [feeder],
        )
        assert second.poll() is None, log_file.read_text()[-3000:]
        assert status()["resumed_from"] == saved and status()["step"] >= saved + 5  # resumed, not from 0
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0, log_file.read_text()[-3000:]
    finally:
        stop_collector.set()
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
        feeder.finish()

    output = log_file.read_text()
    assert f"trainer resumed from {saved_path} (step {saved})" in output  # names carry a lineage token
    final = load_checkpoint(latest_checkpoint(folder))
    assert final.step > saved
    record = read_model(client, config.pipeline.model_key)
    assert (record["version"], record["sha256"]) == (final.step, final.sha256)  # the clean stop published it
    assert status()["step"] == final.step
    client.close()


# ----------------------------------------------------------------- the whole pipeline


class ApiProbe(threading.Thread):
    """``POST /v1/act`` every `every` seconds, one at a time; keeps every answer's
    ``(sent_at, seconds, status)`` (status: the HTTP code, or the error's name)."""

    def __init__(self, url: str, every: float = 0.2) -> None:
        super().__init__(name="api-probe", daemon=True)
        self.url, self.every = url, every
        self.payload = sample_act_payload()
        self.answers: list[tuple[float, float, int | str]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self.halt.is_set():
                sent = time.monotonic()
                try:
                    status: int | str = client.post("/v1/act", json=self.payload).status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                took = time.monotonic() - sent
                self.answers.append((sent, took, status))
                self.halt.wait(max(0.0, self.every - took))

    def stop(self) -> list[tuple[float, float, int | str]]:
        self.halt.set()
        self.join(15)
        return self.answers

    def bad(self, limit_s: float = 1.0) -> list[tuple[float, float, int | str]]:
        return [a for a in self.answers if a[2] != 200 or a[1] >= limit_s]


def _seed_best(config: Config, registry: Registry, client, folder: Path) -> int:
    """A pinned always-long checkpoint (it trades, so it scores and becomes the best),
    registered and queued for validation: the API has a model to serve from the start."""
    torch.manual_seed(0)
    model = StochasticMuZeroNet(config.model)
    last = model.prediction_net.policy.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor((0.0, 40.0, -40.0, -40.0)))  # HOLD, BUY, SELL, CLOSE
    path = folder / "ckpt-seed.pt"
    sha = save_checkpoint(path, model, 0)
    registry.ensure_run(config.pipeline.run_id, config.pipeline.symbol, config.model_dump(mode="json"))
    cid = registry.add_checkpoint(config.pipeline.run_id, 0, str(path), sha)
    enqueue_validation(client, config, cid)
    return cid


@pytest.mark.timeout(240)
@pytest.mark.parametrize("fault", ["redis-sigkill", "redis-sigstop-10s"])
def test_the_pipeline_rides_out_a_redis_fault_and_the_api_keeps_answering(config, market, server, tmp_path, fault):
    """Mid-run, Redis is SIGKILLed (and restarted 3 s later on the same socket and AOF) or
    hung for 10 s (SIGSTOP, SIGCONT). Every service recovers by itself: every episode
    pushed is inserted once, every checkpoint is validated exactly once, and the API
    answers ``/v1/act`` within 1 s throughout."""
    n = 100
    pipe = config.pipeline
    config = config.model_copy(
        update={
            "train": config.train.model_copy(update={"checkpoint_every": 20}),
            "pipeline": pipe.model_copy(
                update={"redis_url": None, "best_dir": tmp_path / "best", "validation_chunks": 4, "api_port": 0}
            ),
        }
    )
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config.model_dump(mode="json")))
    registry = Registry(config.pipeline.database_url)
    client = connect(server.url)
    logs = {name: tmp_path / f"{name}.log" for name in ("validator", "api")}
    services = {
        "validator": _service_process(
            ["services.validator.main", "--metrics-port", "-1"], config_file, server, logs["validator"]
        ),
        "api": _service_process(["services.cli", "api", "--port", "0"], config_file, server, logs["api"]),
    }

    def tails() -> str:
        text = {
            name: "".join(line for line in path.read_text().splitlines(True) if "POST /v1/act" not in line)
            for name, path in logs.items()
        }
        return "".join(f"\n--- {name} log ---\n{t[-5000:]}" for name, t in text.items())

    def alive() -> bool:
        down = {name: p.returncode for name, p in services.items() if p.poll() is not None}
        assert not down, f"exited: {down}{tails()}"
        return True

    stop_collector, stop_trainer = threading.Event(), threading.Event()
    collector = Collector(
        config, stop_collector, client=connect(server.url), collector_id="c0", market=market, seed=1,
        device="cpu", max_episodes=n, max_lag=8,
    )  # fmt: skip
    trainer = Trainer(
        config, stop_trainer, client=connect(server.url), market=market, seed=0, record_ids=True, device="cpu"
    )  # the default hook: checkpoints recorded in the registry and queued for validation
    workers = [Worker(collector.run, "collector"), Worker(trainer.run, "trainer")]
    probe = None
    try:
        seed = _seed_best(config, registry, client, tmp_path / "seed")
        started = wait_for(
            lambda: alive() and re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", logs["api"].read_text()),
            timeout=90,
            every=0.2,
        )
        assert started, f"the API did not start{tails()}"
        port = int(started.group(1))
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=10) as http:
            payload = sample_act_payload()
            wait_until(
                lambda: alive() and http.post("/v1/act", json=payload).status_code == 200,
                90,
                "the API to serve the seed",
            )
        probe = ApiProbe(url)
        probe.start()
        for w in workers:
            w.start()
        wait_until(lambda: alive() and trainer.stats.inserted >= 20, 60, "a running pipeline", workers)
        assert collector.stats.played < n, "the collector finished before the fault; make it slower"

        fault_at = time.monotonic()
        if fault == "redis-sigkill":
            server.stop(signal.SIGKILL)
            time.sleep(3)
            server.start()  # same socket, same AOF
        else:
            server.hang(10)
        fault_end = time.monotonic()

        wait_until(lambda: alive() and not workers[0].is_alive(), 60, "the collector to push all its episodes", workers)
        wait_until(lambda: trainer.stats.inserted >= n, 40, "the trainer to insert every episode", workers)
    finally:
        stop_collector.set()
        stop_trainer.set()
        collector_stats, stats = (w.finish() if w.ident is not None else None for w in workers)
    try:
        # The trainer's last checkpoints (its clean stop saves one) are validated too.
        checkpoints = registry.list_checkpoints(config.pipeline.run_id)
        validated = wait_for(
            lambda: alive() and all(registry.list_validations(checkpoint_id=c.id) for c in checkpoints), timeout=60
        )
        assert validated, f"a checkpoint was not validated within 60 s{tails()}"
        time.sleep(1)  # a duplicate validation would show up now
    finally:
        answers = probe.stop() if probe is not None else []
        for process in services.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes = {}
        for name, process in services.items():
            try:
                codes[name] = process.wait(20)
            except subprocess.TimeoutExpired:
                codes[name] = None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        client.close()

    produced = collector_stats.episode_ids()
    assert len(produced) == n and collector_stats.pushed == n and collector_stats.dropped == 0
    ids = stats.inserted_ids
    assert len(ids) == len(set(ids)), "an episode was inserted twice"
    assert sorted(ids) == sorted(produced), "an episode was lost"
    checkpoints = registry.list_checkpoints(config.pipeline.run_id)
    assert len(checkpoints) >= 3 and seed in {c.id for c in checkpoints}
    validations = {c.id: [v.status for v in registry.list_validations(checkpoint_id=c.id)] for c in checkpoints}
    assert all(v == ["ok"] for v in validations.values()), f"{validations}{tails()}"
    during = [a for a in answers if fault_at - 0.5 <= a[0] <= fault_end]
    assert len(during) >= 10, f"the probe did not run through the fault: {len(during)} answers"
    slowest = max(a[1] for a in answers)
    assert not probe.bad(), f"/v1/act slower than 1 s or failed: {probe.bad()[:10]} (slowest {slowest:.2f} s){tails()}"
    print(f"{fault}: {len(answers)} /v1/act answers, slowest {slowest:.3f} s; {len(checkpoints)} checkpoints")
    # Clean stops (uvicorn re-raises the SIGTERM it handled, so the API "dies" of it).
    assert codes["validator"] == 0 and codes["api"] in (0, -signal.SIGTERM), f"{codes}{tails()}"
    registry.close()
