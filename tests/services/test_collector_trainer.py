"""Collectors and the trainer over a real Redis (``$REDIS_URL`` or 127.0.0.1:6379, keys
under a unique prefix, deleted after), on the bundled EURUSD bars with a tiny model."""

from __future__ import annotations

import argparse
import json
import os
import random
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis
import torch
from prometheus_client import REGISTRY

from services.collector.loop import Collector
from services.trainer.loop import Trainer, default_checkpoint_hook
from shared.config import Config
from shared.learning.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from shared.learning.learner import learning_rate
from shared.market import open_market
from shared.model import ModelConfig
from shared.model.networks import StochasticMuZeroNet
from shared.registry import Registry
from shared.selfplay import SelfPlay
from shared.transport.connection import connect
from shared.transport.keys import RedisKeys
from shared.transport.streams import (
    FIELD,
    EpisodeStream,
    publish_model,
    read_model,
)

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.redis]

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
TINY_MODEL = ModelConfig(
    window=16,
    tcn_channels=8,
    tcn_dilations=(1, 2, 4),
    hidden=32,
    residual_blocks=1,
    head_hidden=16,
    encoder_hidden=16,
    dropout=0.0,
    support_bins=21,
    support_max=30.0,
    chance_codes=4,
)


def tiny_config(data_dir: Path, run_dir: Path, redis_url: str, prefix: str, **pipeline) -> Config:
    """A config small enough for tests: 16-bar window, 32-step episodes, 4 envs, a
    19k-parameter model, 2 simulations, a checkpoint every 5 learner steps."""
    return Config(
        data={"db_path": data_dir / "bars.duckdb", "cache_dir": data_dir / "cache"},
        env={"window": 16, "episode_length": 32},
        model=TINY_MODEL,
        search={"num_simulations": 2, "num_chance_codes": 4, "max_considered_actions": 2},
        learning={
            "min_replay_positions": 64,
            "batch_size": 8,
            "replay_capacity": 4000,
            "unroll_steps": 3,
            "td_steps": 5,
            # ~1 learner step per 32-step episode, so the learner keeps up with the collectors
            "samples_per_insert": 0.25,
            "samples_per_insert_tolerance": 64,
            "lr_decay_steps": 8,  # the trainer service follows the schedule too
        },
        train={"num_envs": 4, "checkpoint_every": 5},
        pipeline={
            "redis_url": redis_url,
            "episode_stream": f"{prefix}:episodes",
            "model_key": f"{prefix}:model",
            "checkpoints_dir": run_dir / "checkpoints",
            "run_id": "test-run",
            "claim_idle_ms": 1000,
            "heartbeat_ttl_s": 3,
            "database_url": f"sqlite:///{run_dir}/registry.db",
            "validation_queue": f"{prefix}:validation",
            "redis_prefix": prefix,
            **pipeline,
        },
    )


def wait_until(condition, timeout: float, what: str, threads=()) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for t in threads:
            if t.error is not None:
                raise t.error
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class Worker(threading.Thread):
    """Runs `target` in a thread; keeps its exception for the test to re-raise."""

    def __init__(self, target, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.target, self.error, self.result = target, None, None

    def run(self) -> None:
        try:
            self.result = self.target()
        except BaseException as exc:  # noqa: BLE001
            self.error = exc

    def finish(self, timeout: float = 20) -> object:
        self.join(timeout)
        assert not self.is_alive(), f"{self.name} did not stop"
        if self.error is not None:
            raise self.error
        return self.result


def sample(name: str, labels: dict | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


@pytest.fixture
def prefix():
    return f"test:pipeline:{uuid.uuid4().hex[:10]}"


@pytest.fixture
def client(prefix):
    r = connect(REDIS_URL)
    r.ping()
    yield r
    for key in r.scan_iter(match=f"{prefix}*", count=1000):
        r.delete(key)
    r.close()


@pytest.fixture
def config(data_dir, tmp_path, prefix, client) -> Config:
    return tiny_config(data_dir, tmp_path, REDIS_URL, prefix)


@pytest.fixture
def market(config):
    return open_market(config, config.pipeline.symbol)


def warmup_episodes(config: Config, market, n_batches: int = 1, run_id: str = "test-run", seed: int = 0):
    selfplay = SelfPlay.from_config(config, market, seed=seed, run_id=run_id)
    import dataclasses

    episodes = [e for _ in range(n_batches) for e in selfplay.play("random")]
    return [dataclasses.replace(e, episode_id=f"w{seed}-{i}") for i, e in enumerate(episodes)]


# ----------------------------------------------------------------------------- end to end


def test_collectors_feed_the_trainer_which_publishes_weights_they_reload(config, market, client, prefix):
    hook_calls = []

    def hook(step, path, sha256):
        hook_calls.append((step, Path(path), sha256))
        return 100 + len(hook_calls)

    stop_collectors, stop_trainer = threading.Event(), threading.Event()
    collectors = [
        Collector(
            config,
            stop_collectors,
            client=connect(REDIS_URL),
            collector_id=f"{prefix}-c{i}",
            market=market,
            seed=i,
            device="cpu",
        )
        for i in range(2)
    ]
    trainer = Trainer(
        config,
        stop_trainer,
        client=connect(REDIS_URL),
        market=market,
        on_checkpoint=hook,
        seed=0,
        record_ids=True,
        device="cpu",
    )
    workers = [Worker(c.run, f"collector{i}") for i, c in enumerate(collectors)] + [Worker(trainer.run, "trainer")]
    for w in workers:
        w.start()
    try:
        # Fresh weights are published and episodes played with them reach the trainer.
        wait_until(lambda: all(c.stats.model_version > 0 for c in collectors), 40, "collectors to reload", workers)
        wait_until(lambda: any(v > 0 for v in trainer.stats.model_versions), 40, "episodes of a trained model", workers)
        for c in collectors:  # alive collectors keep a heartbeat with a TTL
            beat = json.loads(client.get(RedisKeys.from_config(config).collector_heartbeat(c.id)))
            assert beat["id"] == c.id and beat["episodes"] >= 0 and "env_steps_per_s" in beat
            assert (
                0
                < client.ttl(RedisKeys.from_config(config).collector_heartbeat(c.id))
                <= config.pipeline.heartbeat_ttl_s
            )
        wait_until(lambda: client.get(f"{prefix}:trainer:status") is not None, 10, "trainer status", workers)
    finally:
        stop_collectors.set()
        stop_trainer.set()
        collector_stats = [w.finish() for w in workers[:2]]
        stats = workers[2].finish()

    assert stats.steps >= config.train.checkpoint_every and stats.inserted > 0
    # Every inserted episode came from one of the two collectors, once.
    ids = stats.inserted_ids
    assert len(ids) == len(set(ids)) == stats.inserted
    produced = {i for s in collector_stats for i in s.episode_ids()}
    assert set(ids) <= produced
    assert {i.rsplit("-", 2)[0] for i in ids} == {c.id for c in collectors}  # both collectors contributed
    assert stats.rejected == 0 and sum(stats.model_versions.values()) == stats.inserted

    # Checkpoints on disk, each handed to the hook, the newest published.
    folder = Path(config.pipeline.checkpoints_dir) / "test-run"
    assert latest_checkpoint(folder) is not None
    assert [step for step, *_ in stats.checkpoints] == sorted({step for step, *_ in stats.checkpoints})
    assert [c[0] for c in hook_calls] == [c[0] for c in stats.checkpoints]
    for step, path, sha256 in hook_calls:
        assert load_checkpoint(path).sha256 == sha256 and load_checkpoint(path).step == step
    record = read_model(client, config.pipeline.model_key)
    assert record["version"] == stats.steps == stats.checkpoints[-1][0]  # final checkpoint at shutdown
    assert record["checkpoint_id"] == 100 + len(hook_calls)
    assert all(s.model_version > 0 and s.dropped == 0 for s in collector_stats)

    status = json.loads(client.get(f"{prefix}:trainer:status"))
    assert status["step"] == stats.steps and status["episodes_inserted"] == stats.inserted
    assert set(status["losses"]) >= {"total", "policy", "value", "reward", "q", "sigma", "commitment"}
    assert sample("microzero_learning_rate") == pytest.approx(learning_rate(config.learning, stats.steps - 1))
    assert {
        "replay_positions",
        "episodes_received",
        "episodes_rejected",
        "episodes_duplicates",
        "learner_steps_per_s",
        "updated_at",
    } <= set(status)
    for c in collectors:  # a stopped collector removes its heartbeat
        assert client.get(RedisKeys.from_config(config).collector_heartbeat(c.id)) is None


def test_trainer_inserts_once_and_dead_letters_what_it_refuses(config, market, client, prefix):
    episodes = warmup_episodes(config, market, n_batches=1)
    other_run = warmup_episodes(config, market, run_id="another-run", seed=1)[0]
    import dataclasses

    tampered = dataclasses.replace(episodes[3], episode_id="tampered", rewards=episodes[3].rewards + 5)
    stream = EpisodeStream(client, config.pipeline.episode_stream, config.pipeline.stream_maxlen)
    stream.publish_many([episodes[0], episodes[1], episodes[0], other_run, tampered, episodes[2]])
    client.xadd(stream.stream, {FIELD: b"garbage"})
    rejected_before = sample("microzero_episodes_rejected_total")

    trainer = Trainer(
        config, threading.Event(), client=client, market=market, on_checkpoint=None, record_ids=True, device="cpu"
    )
    for _ in range(3):
        assert trainer._redis_round()
    s = trainer.stats
    assert (s.received, s.inserted, s.duplicates, s.rejected) == (7, 3, 1, 3)
    assert s.inserted_ids == ["w0-0", "w0-1", "w0-2"]
    assert len(trainer.replay) == 3 * config.env.episode_length
    assert stream.pending_count(config.pipeline.consumer_group) == 0  # everything acked
    reasons = sorted(d["reason"] for d in stream.dead_letters())
    assert len(reasons) == 3
    assert any("belongs to run 'another-run'" in r for r in reasons)
    assert any("refused by the replay buffer" in r and "replayed reward" in r for r in reasons)
    assert any(r.startswith("undecodable") for r in reasons)
    assert sample("microzero_episodes_rejected_total") - rejected_before == 3
    # A redelivery of everything (group recreated from 0) inserts nothing twice.
    client.xgroup_destroy(stream.stream, config.pipeline.consumer_group)
    for _ in range(2):
        trainer._redis_round()
    assert s.inserted == 3 and s.duplicates == 1 + 4 and s.rejected == 3 + 3


def test_collector_reloads_good_weights_and_keeps_playing_on_bad_ones(config, market, client, prefix, tmp_path, caplog):
    collector = Collector(
        config, threading.Event(), client=client, collector_id=f"{prefix}-c", market=market, device="cpu"
    )
    key = config.pipeline.model_key
    collector._maybe_reload()
    assert collector.stats.model_version == 0  # nothing published: warm-up

    good = StochasticMuZeroNet(config.model)
    sha = save_checkpoint(tmp_path / "ckpt-000000005.pt", good, 5)
    publish_model(client, key, 5, str(tmp_path / "ckpt-000000005.pt"), sha)
    collector._maybe_reload()
    assert collector.stats.model_version == 5
    expected = {k: v.clone() for k, v in good.state_dict().items()}

    def unchanged() -> bool:
        return all(torch.equal(v, expected[k]) for k, v in collector.model.state_dict().items())

    assert unchanged()
    # A corrupted file: refused (sha256), old weights kept.
    bad = tmp_path / "ckpt-000000010.pt"
    sha_bad = save_checkpoint(bad, StochasticMuZeroNet(config.model), 10)
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    publish_model(client, key, 10, str(bad), sha_bad)
    collector._maybe_reload()
    assert collector.stats.model_version == 5 and unchanged()
    assert "cannot load published model version 10" in caplog.text and "does not match" in caplog.text
    # Weights of another architecture: refused before anything is loaded.
    other = StochasticMuZeroNet(TINY_MODEL.model_copy(update={"hidden": 24}))
    sha_other = save_checkpoint(tmp_path / "ckpt-000000015.pt", other, 15)
    publish_model(client, key, 15, str(tmp_path / "ckpt-000000015.pt"), sha_other)
    collector._maybe_reload()
    assert collector.stats.model_version == 5 and unchanged()
    # A record whose sha256 is not the file's, and a missing file.
    publish_model(client, key, 20, str(tmp_path / "ckpt-000000005.pt"), "0" * 64)
    collector._maybe_reload()
    publish_model(client, key, 25, str(tmp_path / "missing.pt"), "1" * 64)
    collector._maybe_reload()
    assert collector.stats.model_version == 5 and unchanged()
    # Good weights again: reloaded.
    sha30 = save_checkpoint(tmp_path / "ckpt-000000030.pt", StochasticMuZeroNet(config.model), 30)
    publish_model(client, key, 30, str(tmp_path / "ckpt-000000030.pt"), sha30)
    collector._maybe_reload()
    assert collector.stats.model_version == 30 and not unchanged()


def test_collector_holds_a_bounded_queue_while_redis_is_away(config, market, tmp_path):
    dead = connect(f"unix://{tmp_path / 'nothing-listens-here.sock'}", connect_timeout=0.5)
    collector = Collector(
        config, threading.Event(), client=dead, collector_id="dropper", market=market, device="cpu", max_pending=6
    )
    dropped_before = sample("microzero_collector_episodes_dropped_total", {"collector": "dropper"})
    assert collector._sync() is False and collector.outage.down
    collector._play_batch()
    collector._play_batch()  # 8 episodes, room for 6: the 2 oldest go
    assert len(collector.pending) == 6 and collector.stats.dropped == 2
    assert [e.episode_id for e in collector.pending] == collector.stats.episode_ids()[2:]
    assert sample("microzero_collector_episodes_dropped_total", {"collector": "dropper"}) - dropped_before == 2
    assert sample("microzero_collector_pending_episodes", {"collector": "dropper"}) == 6


# ----------------------------------------------------------------------------- hook and CLI


class FakeRegistry:
    """Records what the trainer's checkpoint hook asks of the registry."""

    def __init__(self) -> None:
        self.runs: list[tuple] = []
        self.checkpoints: list[tuple] = []

    def ensure_run(self, run_id, symbol, config_dict):
        self.runs.append((run_id, symbol, sorted(config_dict)))

    def add_checkpoint(self, run_id, step, path, sha256):
        self.checkpoints.append((run_id, step, path, sha256))
        return len(self.checkpoints)

    def checkpoints_by_paths(self, paths):
        return {}


def test_default_hook_registers_once_even_when_enqueue_is_retried(config, client):
    registry, enqueued, failures = FakeRegistry(), [], [1]

    def enqueue(redis_client, cfg, checkpoint_id):
        if failures[0]:
            failures[0] -= 1
            raise redis.ConnectionError("Redis went away")
        enqueued.append(checkpoint_id)

    hook = default_checkpoint_hook(config, client, registry=registry, enqueue=enqueue)
    with pytest.raises(redis.ConnectionError):
        hook(5, Path("/ck/ckpt-5.pt"), "a" * 64)
    assert hook(5, Path("/ck/ckpt-5.pt"), "a" * 64) == 1  # the retry does not add a second row
    assert hook(10, Path("/ck/ckpt-10.pt"), "b" * 64) == 2
    assert registry.checkpoints == [
        ("test-run", 5, "/ck/ckpt-5.pt", "a" * 64),
        ("test-run", 10, "/ck/ckpt-10.pt", "b" * 64),
    ]
    assert enqueued == [1, 2]
    assert len(registry.runs) == 1 and registry.runs[0][:2] == ("test-run", "EURUSD")


def _parser():
    from services.collector.main import register as register_collector
    from services.trainer.main import register as register_trainer

    parser = argparse.ArgumentParser(prog="microzero")
    sub = parser.add_subparsers(dest="command", required=True)
    register_collector(sub)
    register_trainer(sub)
    return parser


def test_cli_entrypoints_run_collector_then_trainer(config, client, prefix, capsys):
    """The real entrypoints, the real SQLite registry and RQ queue (ids start at a random
    offset: RQ job ids ``validate-<id>`` are global on a shared Redis)."""
    from sqlalchemy import text

    registry = Registry(config.pipeline.database_url)
    offset = random.randrange(10**6, 10**9)
    with registry.engine.begin() as conn:
        conn.execute(text("INSERT INTO sqlite_sequence (name, seq) VALUES ('checkpoints', :seq)"), {"seq": offset})
    try:
        _run_collector_then_trainer(config, client, prefix, registry, offset, capsys)
    finally:
        for key in client.scan_iter(match=f"rq:*validate-{offset + 1}*"):
            client.delete(key)
        for key in client.scan_iter(match=f"rq:*validate-{offset + 2}*"):
            client.delete(key)
        client.srem("rq:queues", f"rq:queue:{config.pipeline.validation_queue}")
        registry.close()


def _run_collector_then_trainer(config, client, prefix, registry, offset, capsys):
    from rq import Queue

    parser = _parser()
    args = parser.parse_args(
        ["collector", "--device", "cpu", "--id", f"{prefix}-cli", "--max-episodes", "10", "--metrics-port", "0"]
    )
    assert args.func(args, config) == 0
    assert "10 episodes played, 10 pushed, 0 dropped" in capsys.readouterr().out
    stream = EpisodeStream(client, config.pipeline.episode_stream, 100)
    assert stream.length() == 10

    args = parser.parse_args(["trainer", "--device", "cpu", "--max-steps", "7", "--metrics-port", "-1"])
    assert args.func(args, config) == 0
    out = capsys.readouterr().out
    assert "trainer: step 7, " in out
    inserted = int(out.split("trainer: step 7, ")[1].split(" episodes inserted")[0])
    # The trainer reads only as far ahead as samples-per-insert allows; the rest waits in the stream.
    assert 2 <= inserted <= 10 and stream.lag(config.pipeline.consumer_group) == 10 - inserted
    steps = [c.step for c in reversed(registry.list_checkpoints())]
    assert steps == [5, 7]  # registered ...
    queue = Queue(config.pipeline.validation_queue, connection=client)
    assert sorted(queue.job_ids) == [f"validate-{offset + 1}", f"validate-{offset + 2}"]  # ... validation enqueued
    record = read_model(client, config.pipeline.model_key)
    assert (record["version"], record["checkpoint_id"]) == (7, offset + 2)
    assert stream.pending_count(config.pipeline.consumer_group) == 0

    # Restarted, it resumes from step 7 (no new steps: max reached) and republishes nothing new.
    assert args.func(args, config) == 0
    assert "trainer: step 7" in capsys.readouterr().out
    assert registry.count_checkpoints() == 2


def test_cli_needs_a_redis_url(config, monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    from shared.cli import CommandError

    bare = config.model_copy(update={"pipeline": config.pipeline.model_copy(update={"redis_url": None})})
    parser = _parser()
    for argv in (["collector", "--metrics-port", "-1"], ["trainer", "--metrics-port", "-1"]):
        args = parser.parse_args(argv)
        with pytest.raises(CommandError, match="no Redis configured: set pipeline.redis_url"):
            args.func(args, bare)


def test_bench_transport_measures_and_cleans_up(config, market, client):
    from shared.transport.bench import bench_transport, format_transport

    report = bench_transport(client, 24, config=config, market=market, collector_steps=2)
    assert report["transport_episodes_per_s"] > 0 and report["collector_episodes_per_s"] > 0
    assert report["ratio"] == pytest.approx(report["transport_episodes_per_s"] / report["collector_episodes_per_s"])
    assert report["episode_bytes"] < 2_000 and report["collector_num_envs"] == config.train.num_envs
    assert client.exists(report["stream"], f"{report['stream']}:dead") == 0
    assert "ratio transport / collector" in format_transport(report)


def test_bench_pipeline_command_reports_transport_and_act_latency(config, tmp_path, capsys):
    """`microzero bench pipeline` end to end: real Redis, a real `microzero api` process."""
    from services.cli import build_parser
    from shared.bench import _bench_pipeline, _print_pipeline
    from shared.config import load_config

    config_file = tmp_path / "config.json"
    config_file.write_text(config.model_dump_json())
    argv = [
        "--config",
        str(config_file),
        "bench",
        "pipeline",
        "--episodes",
        "16",
        "--requests",
        "12",
        "--concurrency",
        "3",
    ]
    args = build_parser().parse_args(argv)
    report = _bench_pipeline(args, load_config(args.config))
    transport, act = report["transport"], report["act"]
    assert transport["n_episodes"] == 16 and transport["redis"] == REDIS_URL
    assert act["requests"] == 12 and act["errors"] == 0, act["first_error"]
    assert 0 < act["p50_ms"] <= act["p99_ms"] and act["requests_per_s"] > 0
    # Latency beside the bare search of the same batch sizes, measured in the same run.
    assert act["one_client"]["errors"] == 0 and act["phases"]["search_b1_ms"] > 0 and act["phases"]["search_b3_ms"] > 0
    assert act["ratio_p50_one_client_to_search_b1"] == pytest.approx(
        act["one_client"]["p50_ms"] / act["phases"]["search_b1_ms"]
    )
    _print_pipeline(report)
    out = capsys.readouterr().out
    assert "ratio transport / collector" in out and "POST /v1/act" in out and "0 errors" in out
    assert "x a bare B=1 search" in out and "x a bare B=3 search" in out
