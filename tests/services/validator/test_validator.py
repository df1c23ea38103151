"""The validator: quality score, RQ jobs on a real Redis and a real worker (in-process
``SimpleWorker``, JSON serializer), the SQLite registry, best checkpoint handling.

Isolation: Redis database 13 of ``$REDIS_URL`` (default 127.0.0.1:6379), a unique queue
name and pub/sub channel, checkpoint ids starting at a random offset (RQ job ids are
``validate-<id>``), every key deleted afterwards. The market is 2,500 synthetic sine bars
in a temp DuckDB file; the models are ~19k-parameter nets whose policy head is pinned
(always long / always short / never trade), so the backtests take about a second.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pytest
import redis
import torch
from prometheus_client import REGISTRY
from rq import Retry
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from sqlalchemy import text

from services.validator import job as validation
from services.validator.job import EQUITY_POINTS, ValidationFailed, equity_curve, update_best
from services.validator.main import register
from services.validator.scoring import quality_score
from services.validator.worker import build_worker
from shared.cli import CommandError
from shared.config import Config
from shared.data.store import BarStore
from shared.data.synthetic import synthetic_bars
from shared.learning.checkpoint import load_checkpoint, save_checkpoint
from shared.metrics import compute_metrics
from shared.model import ModelConfig
from shared.model.networks import StochasticMuZeroNet
from shared.registry import Registry
from shared.transport.jobs import LEGACY_JOB_FUNCTIONS, enqueue_validation, validation_queue
from shared.transport.keys import RedisKeys
from tests.helpers import REPO

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
# Policy logits (HOLD, BUY, SELL, CLOSE): big gaps, so the greedy search follows them.
ALWAYS_LONG = (0.0, 40.0, -40.0, -40.0)
ALWAYS_SHORT = (0.0, -40.0, 40.0, -40.0)
NEVER_TRADE = (40.0, -40.0, -40.0, -40.0)
SYMBOL = "SYNTH"
RUN = "test-run"


def _test_redis_url() -> str:
    """$REDIS_URL (or the local server) with database 13 instead of the default 0."""
    base = urlsplit(os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
    if base.scheme not in ("redis", "rediss"):
        return "redis://127.0.0.1:6379/13"
    return urlunsplit((base.scheme, base.netloc, "/13", base.query, ""))


REDIS_URL = _test_redis_url()


@dataclass
class Env:
    config: Config
    registry: Registry
    redis: redis.Redis
    tmp: Path
    channel: str
    job_ids: set[str]

    def enqueue(self, checkpoint_id: int) -> Job:
        job = enqueue_validation(self.redis, self.config, checkpoint_id)
        self.job_ids.add(job.id)
        return job

    def checkpoint(self, step: int, logits=ALWAYS_LONG) -> int:
        """Save a pinned-policy checkpoint and record it; returns its registry id."""
        torch.manual_seed(step)
        model = StochasticMuZeroNet(TINY_MODEL)
        last = model.prediction_net.policy.net[-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.copy_(torch.tensor(logits))
        path = self.tmp / "checkpoints" / f"ckpt-{step:09d}.pt"
        sha = save_checkpoint(path, model, step)
        return self.registry.add_checkpoint(RUN, step, str(path), sha)

    def work(self) -> None:
        build_worker(self.config, self.redis).work(burst=True)

    def job(self, checkpoint_id: int) -> Job:
        return Job.fetch(f"validate-{checkpoint_id}", connection=self.redis, serializer=JSONSerializer)


def _sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


@pytest.fixture
def env(tmp_path, monkeypatch):
    for key in list(os.environ):
        if key.startswith("MZ_"):
            monkeypatch.delenv(key)
    bars_path = tmp_path / "bars.duckdb"
    BarStore(bars_path).import_bars(SYMBOL, synthetic_bars("sine", 2500, seed=1))
    queue_name = f"validation-test-{uuid.uuid4().hex[:10]}"
    config = Config(
        data={"db_path": bars_path, "cache_dir": tmp_path / "cache"},
        env={"window": 16, "episode_length": 32},
        model=TINY_MODEL,
        search={"num_simulations": 2, "num_chance_codes": 4, "max_considered_actions": 2},
        pipeline={
            "redis_url": REDIS_URL,
            "database_url": f"sqlite:///{tmp_path}/registry.db",
            "run_id": RUN,
            "symbol": SYMBOL,
            "checkpoints_dir": tmp_path / "checkpoints",
            "best_dir": tmp_path / "best",
            "best_history": 2,
            "validation_queue": queue_name,
            "validation_chunks": 4,
            "validation_retries": 2,
            "redis_prefix": f"mz-test-{uuid.uuid4().hex[:10]}",
        },
    )
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config.model_dump(mode="json")))
    monkeypatch.setenv("MZ_CONFIG", str(config_file))  # what load_config() in the job reads
    channel = RedisKeys.from_config(config).best_channel

    registry = Registry(config.pipeline.database_url)
    # Job ids are validate-<checkpoint id>: start ids at a random offset so that
    # concurrent runs of this file on the same Redis database cannot collide.
    with registry.engine.begin() as conn:
        conn.execute(
            text("INSERT INTO sqlite_sequence (name, seq) VALUES ('checkpoints', :seq)"),
            {"seq": random.randrange(10**6, 10**9)},
        )
    registry.ensure_run(RUN, SYMBOL, config.model_dump(mode="json"))
    client = redis.Redis.from_url(REDIS_URL)
    job_ids: set[str] = set()
    yield Env(config, registry, client, tmp_path, channel, job_ids)

    keys = set(client.scan_iter(match=f"*{queue_name}*", count=1000))
    for job_id in job_ids:
        for pattern in (f"rq:*{job_id}", f"rq:*{job_id}:*"):
            keys.update(client.scan_iter(match=pattern, count=1000))
    for key in client.scan_iter(match="rq:worker:*", count=1000):
        # Not every rq:worker:* key is a worker's hash (RQ keeps other kinds under it).
        if client.type(key) == b"hash" and client.hget(key, "queues") == queue_name.encode():
            keys.add(key)
    if keys:
        client.delete(*keys)
    client.srem("rq:queues", f"rq:queue:{queue_name}")
    client.close()
    registry.close()
    for reg in validation._registries.values():
        reg.close()
    validation._registries.clear()


# --------------------------------------------------------------------------- the score


def test_quality_score_definition():
    pipe = Config().pipeline
    assert quality_score({"trades": 10, "sqn": 1.5, "amddp1_per_trade": 4.0}, pipe) == pytest.approx(1.9)
    assert quality_score({"trades": 0, "sqn": None, "amddp1_per_trade": None}, pipe) == -math.inf
    assert quality_score({"trades": 0, "sqn": 5.0, "amddp1_per_trade": 50.0}, pipe) == -math.inf
    # One trade (SQN undefined) counts SQN as 0.
    assert quality_score({"trades": 1, "sqn": None, "amddp1_per_trade": -3.0}, pipe) == pytest.approx(-0.3)
    weighted = Config(pipeline={"score_sqn_weight": 2.0, "score_amddp1_weight": 0.5})
    assert quality_score({"trades": 5, "sqn": -1.0, "amddp1_per_trade": 20.0}, weighted) == pytest.approx(-1.0)
    # TradingMetrics and its as_dict() score the same.
    metrics = compute_metrics([10.0, -4.0, 6.0], [1.0, -2.0, 3.0], 6240.0, trade_amddp1=[9.0, -5.0, 6.0])
    expected = metrics.sqn + (10.0 / 3) / 10
    assert quality_score(metrics, pipe) == pytest.approx(expected)
    assert quality_score(metrics.as_dict(), Config()) == pytest.approx(expected)
    assert quality_score(compute_metrics([], [0.0, 0.0], 6240.0, trade_amddp1=[]), pipe) == -math.inf


def test_equity_curve_is_downsampled_with_both_ends():
    curve = equity_curve(np.ones(999))
    assert curve["bars"] == 999 and len(curve["pips"]) == EQUITY_POINTS
    assert curve["pips"][0] == 0 and curve["pips"][-1] == 999 and curve["pips"] == sorted(curve["pips"])
    assert equity_curve(np.array([1.004, -2.0]), points=10) == {"bars": 2, "pips": [0.0, 1.0, -1.0]}


# --------------------------------------------------------------------------- end to end


def test_worker_validates_and_keeps_the_best(env):
    ok_before = _sample("microzero_validations_total", {"status": "ok"})
    long_id = env.checkpoint(10, ALWAYS_LONG)
    short_id = env.checkpoint(20, ALWAYS_SHORT)
    flat_id = env.checkpoint(30, NEVER_TRADE)
    jobs = [env.enqueue(cid) for cid in (long_id, short_id, flat_id)]
    # Enqueueing again while the job waits returns it instead of queueing a duplicate.
    assert env.enqueue(long_id).id == jobs[0].id == f"validate-{long_id}"
    queue = validation_queue(env.redis, env.config)
    assert queue.count == 3
    assert jobs[0].timeout == env.config.pipeline.validation_timeout_s and jobs[0].retries_left == 2

    pubsub = env.redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(env.channel)
    started = time.monotonic()
    env.work()
    elapsed = time.monotonic() - started
    assert queue.count == 0

    scores = {}
    for cid, job in zip((long_id, short_id, flat_id), jobs):
        job.refresh()
        assert job.get_status() == JobStatus.FINISHED, job.latest_result().exc_string
        result = job.return_value()
        record = env.registry.get_checkpoint(cid)
        v = record.latest_validation
        assert (v.status, v.split, v.error) == ("ok", "validation", None)
        assert v.duration_s > 0 and v.metrics["bars"] > 300
        assert v.metrics["n_trials"] == 3  # three checkpoints of the run were tried
        assert v.score == quality_score(v.metrics, env.config)
        assert (result["checkpoint_id"], result["step"], result["score"]) == (cid, record.step, v.score)
        assert result["metrics"]["trades"] == v.metrics["trades"]
        # The status page's equity curve: every bar, downsampled, ending at the total.
        _, equity = env.registry.equity_curve(cid)
        assert equity["bars"] == v.metrics["bars"] and len(equity["pips"]) == EQUITY_POINTS
        assert equity["pips"][0] == 0 and equity["pips"][-1] == pytest.approx(v.metrics["total_pips"], abs=0.01)
        scores[cid] = v.score
    assert scores[flat_id] == -math.inf  # never trades, never best
    assert env.registry.get_checkpoint(long_id).latest_validation.metrics["trades"] >= 4  # one per chunk
    assert math.isfinite(scores[long_id]) and math.isfinite(scores[short_id]) and scores[long_id] != scores[short_id]

    winner = max((long_id, short_id), key=scores.get)
    best = env.registry.best_checkpoint()
    best_file = Path(env.config.pipeline.best_dir).resolve() / "best.pt"
    assert best.id == winner and best.best_path == str(best_file)
    assert load_checkpoint(best_file).sha256 == best.sha256 == hashlib.sha256(best_file.read_bytes()).hexdigest()
    assert Path(f"{best_file}.sha256").read_text() == f"{best.sha256}  best.pt\n"
    assert [job.return_value()["is_best"] for job in jobs] == [True, winner == short_id, False]
    history = sorted(p.name for p in (best_file.parent / "history").glob("*.pt"))
    expected_history = [f"{RUN}-{s:09d}.pt" for s in ((10, 20) if winner == short_id else (10,))]
    assert history == expected_history

    # Every new best was published for the API: {checkpoint_id, path}.
    messages = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(messages) < len(expected_history):
        message = pubsub.get_message(timeout=0.2)
        if message:
            messages.append(json.loads(message["data"]))
    pubsub.close()
    assert messages[-1] == {"checkpoint_id": winner, "path": str(best_file)}
    assert len(messages) == len(expected_history)

    assert _sample("microzero_validations_total", {"status": "ok"}) == ok_before + 3
    assert _sample("microzero_validation_score") == -math.inf  # the latest one: never trades
    assert _sample("microzero_best_score") == pytest.approx(scores[winner])
    assert _sample("microzero_validation_metric", {"metric": "trades"}) == 0
    print(f"3 validations in {elapsed:.2f} s")


def test_bad_checkpoints_fail_with_a_clear_reason_and_the_worker_goes_on(env):
    failed_before = _sample("microzero_validations_total", {"status": "failed"})
    corrupt_id = env.checkpoint(10)
    missing_id = env.checkpoint(20)
    good_id = env.checkpoint(30)
    corrupt_path = Path(env.registry.get_checkpoint(corrupt_id).path)
    data = bytearray(corrupt_path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    corrupt_path.write_bytes(bytes(data))
    Path(env.registry.get_checkpoint(missing_id).path).unlink()
    unknown_id = good_id + 1000
    for cid in (corrupt_id, missing_id, unknown_id, good_id):
        env.enqueue(cid)

    env.work()

    reasons = {corrupt_id: "does not match", missing_id: "file does not exist", unknown_id: "is not in the registry"}
    for cid, reason in reasons.items():
        job = env.job(cid)
        # Failed for good: a deterministic failure is not retried (retries_left forced to 0).
        assert job.get_status() == JobStatus.FAILED
        assert job.retries_left == 0
        exc = job.latest_result().exc_string
        assert "ValidationFailed" in exc and reason in exc
    for cid in (corrupt_id, missing_id):
        v = env.registry.get_checkpoint(cid).latest_validation
        assert (v.status, v.score, v.metrics) == ("failed", None, None)
        assert reasons[cid] in v.error and str(env.registry.get_checkpoint(cid).path) in v.error
        assert len(env.registry.list_validations(checkpoint_id=cid)) == 1  # recorded once
    assert env.job(good_id).get_status() == JobStatus.FINISHED
    assert env.registry.get_checkpoint(good_id).latest_validation.status == "ok"
    assert env.registry.best_checkpoint().id == good_id
    assert _sample("microzero_validations_total", {"status": "failed"}) == failed_before + 3


def test_transient_failure_is_retried(env, monkeypatch):
    import shared.training

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: the device fell off the bus")

    monkeypatch.setattr(shared.training, "evaluate", broken)
    cid = env.checkpoint(10)
    env.enqueue(cid)
    env.work()
    job = env.job(cid)
    assert job.get_status() == JobStatus.SCHEDULED  # retried after RETRY_INTERVALS_S[0] seconds
    assert job.retries_left == 1
    v = env.registry.get_checkpoint(cid).latest_validation
    assert v.status == "failed" and v.error == "RuntimeError: CUDA error: the device fell off the bus"
    # While it waits for its retry, enqueueing again does not duplicate it.
    assert env.enqueue(cid).get_status() == JobStatus.SCHEDULED


# --------------------------------------------------------------------------- the best, with given scores


def test_update_best_with_given_scores(env):
    best_dir = Path(env.config.pipeline.best_dir).resolve()

    def validated(step: int, score: float):
        cid = env.checkpoint(step)
        env.registry.add_validation(cid, "ok", score=score, metrics={}, error=None, split="validation", duration_s=1)
        return env.registry.get_checkpoint(cid)

    never = validated(1, -math.inf)
    assert update_best(env.registry, env.config, never, -math.inf) is False  # no trades: never best
    assert env.registry.best_checkpoint() is None and not best_dir.joinpath("best.pt").exists()

    outcomes = []
    for step, score in ((10, 1.0), (20, 0.5), (30, 2.0), (40, 2.0), (50, 3.0)):
        record = validated(step, score)
        outcomes.append((step, update_best(env.registry, env.config, record, score)))
        assert update_best(env.registry, env.config, env.registry.best_checkpoint(), 0.0) is True  # already best
        time.sleep(0.01)  # distinct history mtimes
    assert outcomes == [(10, True), (20, False), (30, True), (40, False), (50, True)]  # ties keep the incumbent
    best = env.registry.best_checkpoint()
    assert best.step == 50 and best.best_path == str(best_dir / "best.pt")
    assert load_checkpoint(best_dir / "best.pt").sha256 == best.sha256
    # History pruned to best_history = 2 copies (sidecars go with them).
    history = sorted(p.name for p in (best_dir / "history").iterdir())
    assert history == [
        f"{RUN}-000000030.pt",
        f"{RUN}-000000030.pt.sha256",
        f"{RUN}-000000050.pt",
        f"{RUN}-000000050.pt.sha256",
    ]
    assert not list(best_dir.glob(".*.tmp"))

    # A file replaced after its validation is refused, and the best stays.
    record = validated(60, 10.0)
    Path(record.path).write_bytes(b"not the validated weights")
    with pytest.raises(ValidationFailed, match="changed after it was registered"):
        update_best(env.registry, env.config, record, 10.0)
    assert env.registry.best_checkpoint().step == 50


# --------------------------------------------------------------------------- the service entrypoint


def test_validator_command(env, monkeypatch):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["validator", "--burst", "--metrics-port", "-1"])
    assert (args.burst, args.metrics_port) == (True, -1)

    monkeypatch.delenv("REDIS_URL", raising=False)
    no_redis = env.config.model_copy(update={"pipeline": env.config.pipeline.model_copy(update={"redis_url": None})})
    with pytest.raises(CommandError, match="no Redis configured"):
        args.func(args, no_redis)

    cid = env.checkpoint(10)
    env.enqueue(cid)
    assert args.func(args, env.config) == 0  # burst: validates the job, then exits
    assert env.job(cid).get_status() == JobStatus.FINISHED
    assert env.registry.best_checkpoint().id == cid


def test_validator_process_counts_jobs_in_its_metrics_and_stops_on_sigterm(env):
    """The real service process: ``--config`` reaches the jobs, the jobs' metrics show on
    its /metrics (jobs run in the worker process), SIGTERM stops it cleanly."""
    cid = env.checkpoint(10, NEVER_TRADE)  # scores -inf: validated, never best, nothing published
    env.enqueue(cid)
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("MZ_") and k != "REDIS_URL"}
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.validator.main",
            "--config",
            str(env.tmp / "config.json"),
            "--metrics-port",
            "0",
        ],
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        start_new_session=True,  # its own group: RQ's scheduler too
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(child.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while env.job(cid).get_status() != JobStatus.FINISHED:
            assert child.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        port = next(int(m.group(1)) for line in list(lines) if (m := re.search(r"metrics on http://\S+:(\d+)/", line)))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            exposition = response.read().decode()
        assert 'microzero_validations_total{status="ok"} 1.0' in exposition
        assert "microzero_validation_score -Inf" in exposition
        child.send_signal(signal.SIGTERM)
        assert child.wait(20) == 0, "".join(lines)
    finally:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)  # a scheduler process left behind by a failed run
        child.wait()
        reader.join(5)
    assert env.registry.get_checkpoint(cid).latest_validation.status == "ok"


def test_an_idle_worker_stops_its_pubsub_listener_at_once(env):
    """Regression (SIGTERM took 60 s about half the time): RQ's teardown sends UNSUBSCRIBE,
    then stops its pub/sub listener thread, and redis-py's ``PubSubWorkerThread.stop()``
    joins it without a timeout. A listener that read the UNSUBSCRIBE reply first went
    back to wait 60 s for a subscription, and the exit waited with it. Forced here."""
    worker = build_worker(env.config, env.redis)
    worker.subscribe()
    listener, pubsub = worker.pubsub_thread, worker.pubsub
    try:
        pubsub.unsubscribe()  # the listener reads this reply: no longer subscribed
        deadline = time.monotonic() + 10
        while pubsub.subscribed:
            assert time.monotonic() < deadline, "the listener did not read the UNSUBSCRIBE reply"
            time.sleep(0.02)
        stopper = threading.Thread(target=worker.unsubscribe, daemon=True)
        started = time.monotonic()
        stopper.start()
        stopper.join(10)
        assert not stopper.is_alive() and time.monotonic() - started < 3
        listener.join(3)
        assert not listener.is_alive()
    finally:
        listener._running.clear()
        pubsub.close()


def test_the_worker_keeps_short_redis_timeouts(env):
    """RQ blocks 405 s per dequeue and raises the client's socket timeout to 415 s; the
    validator's worker blocks briefly and keeps the client's timeout, so a hung Redis
    costs seconds."""
    from services.validator.worker import DEQUEUE_TIMEOUT_S, SOCKET_TIMEOUT_S
    from shared.transport.connection import connect

    client = connect(REDIS_URL, socket_timeout=SOCKET_TIMEOUT_S)
    try:
        worker = build_worker(env.config, client)
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == SOCKET_TIMEOUT_S and kwargs["socket_connect_timeout"] <= 5
        assert kwargs["health_check_interval"] > 0
        assert worker.dequeue_timeout == DEQUEUE_TIMEOUT_S < SOCKET_TIMEOUT_S
    finally:
        client.close()


def test_jobs_queued_under_the_old_dotted_path_still_run(env):
    """A job an older version queued names ``shared.pipeline.validation.validate_checkpoint``;
    the worker's job class runs it as the validator's job."""
    cid = env.checkpoint(10)
    job = validation_queue(env.redis, env.config).enqueue(LEGACY_JOB_FUNCTIONS[0], cid, job_id=f"validate-{cid}")
    env.job_ids.add(job.id)
    env.work()
    assert env.job(cid).get_status() == JobStatus.FINISHED
    assert env.registry.get_checkpoint(cid).latest_validation.status == "ok"


# --------------------------------------------------------------------------- the allow-list


def write_marker(path: str) -> None:
    """What a hostile job or callback would do, if it ran: leave a file behind."""
    Path(path).write_text("ran")


def test_jobs_outside_the_allow_list_are_refused_and_recorded_as_failed(env):
    """Anyone who can write to Redis can queue any dotted name on the queue; the worker
    must run only the validation job, and refuse the rest without importing them."""
    from rq import Callback

    from services.validator.worker import RefusedJob

    queue = validation_queue(env.redis, env.config)
    marker = env.tmp / "pwned"
    cid = env.checkpoint(10)
    hostile = [
        queue.enqueue("os.system", f"touch {marker}", retry=Retry(max=2)),  # the probe
        queue.enqueue(f"{__name__}.write_marker", str(marker)),
        # The right function, with a callback RQ would import and call after it.
        queue.enqueue(validation.validate_checkpoint, cid, on_failure=Callback(f"{__name__}.write_marker")),
        queue.enqueue(validation.validate_checkpoint, cid, on_success=Callback("os.system")),
        queue.enqueue(validation.validate_checkpoint, "; rm -rf /"),  # not a checkpoint id
        queue.enqueue(validation.validate_checkpoint, cid, extra=1),
        queue.enqueue("microzero_module_that_does_not_exist.run"),  # refused before any import
    ]
    env.job_ids.update(job.id for job in hostile)
    good = env.enqueue(cid)  # behind them: the worker goes on after refusing

    env.work()

    assert not marker.exists(), "a refused job ran"
    assert "microzero_module_that_does_not_exist" not in sys.modules
    for job in hostile:
        job = Job.fetch(job.id, connection=env.redis, serializer=JSONSerializer)
        assert job.get_status() == JobStatus.FAILED, job.func_name
        assert job.retries_left in (None, 0)  # never retried
        exc = job.latest_result().exc_string
        assert RefusedJob.__name__ in exc and "it was not run" in exc, exc
    exc = {
        job.id: Job.fetch(job.id, connection=env.redis, serializer=JSONSerializer).latest_result().exc_string
        for job in hostile
    }
    assert "'os.system' is not on the validator's allow-list" in exc[hostile[0].id]
    assert "callbacks are not allowed" in exc[hostile[2].id] and "callbacks are not allowed" in exc[hostile[3].id]
    assert "one integer checkpoint id" in exc[hostile[4].id] and "one integer checkpoint id" in exc[hostile[5].id]
    assert env.job(cid).get_status() == JobStatus.FINISHED and good.id == f"validate-{cid}"
    assert [v.status for v in env.registry.list_validations(checkpoint_id=cid)] == [
        "ok"
    ]  # refused ones recorded nothing


def test_a_checkpoint_is_validated_once_however_often_its_job_runs(env):
    """Re-running a job (after a crash or a Redis outage) does not validate again."""
    cid = env.checkpoint(10)
    env.enqueue(cid)
    env.work()
    first = env.job(cid).return_value()
    assert first["already_validated"] is False
    env.enqueue(cid)  # a finished job of that id is replaced: the job runs again
    env.work()
    again = env.job(cid).return_value()
    assert again["already_validated"] is True
    assert (again["validation_id"], again["score"], again["is_best"]) == (first["validation_id"], first["score"], True)
    assert len(env.registry.list_validations(checkpoint_id=cid)) == 1
