"""Faults: Redis stopped (SIGTERM) or killed (SIGKILL) mid-run and restarted, and a trainer killed with SIGKILL.

Each test starts its own ``redis-server`` on a unix socket with AOF (``appendfsync
always``) in ``tmp_path``, so a restart on the same socket keeps the stream, the group
and its pending entries.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from services.collector.loop import Collector
from services.trainer.loop import Trainer
from shared.learning.checkpoint import latest_checkpoint, load_checkpoint
from shared.market import open_market
from shared.transport.connection import connect
from shared.transport.keys import RedisKeys
from shared.transport.streams import EpisodeStream, read_model
from tests.helpers import REPO
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


def _trainer_process(config_file: Path, server, log_file: Path) -> subprocess.Popen:
    env = dict(os.environ, MZ_CONFIG=str(config_file), REDIS_URL=server.url, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("MZ_PIPELINE__REDIS_URL", None)
    return subprocess.Popen(
        [sys.executable, "-m", "services.trainer.main", "--device", "cpu", "--metrics-port", "-1"],
        cwd=REPO,
        env=env,
        stdout=log_file.open("ab"),
        stderr=subprocess.STDOUT,
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
        saved = saved_step()
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
    assert f"trainer resumed from {folder / f'ckpt-{saved:09d}.pt'} (step {saved})" in output
    final = load_checkpoint(latest_checkpoint(folder))
    assert final.step > saved
    record = read_model(client, config.pipeline.model_key)
    assert (record["version"], record["sha256"]) == (final.step, final.sha256)  # the clean stop published it
    assert status()["step"] == final.step
    client.close()
