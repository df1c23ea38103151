"""Validator faults, with real validator processes and a private ``redis-server`` (AOF,
``appendfsync always``, its own unix socket): SIGTERM mid-job hands the job back,
Redis killed while a validation runs (it finishes during the outage), Redis hung
(SIGSTOP) for 10 s while a validation runs, and the validator SIGKILLed mid-job. In each, the checkpoint ends validated exactly once.

The validation is made slow by a wrapper that delays ``shared.training.evaluate`` by
``MZ_TEST_SLOW_S`` seconds and notes each call in a file, so the tests know when a job
is mid-flight; everything else is the real ``services.validator.main``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from shared.config import Config
from shared.data.store import BarStore
from shared.data.synthetic import synthetic_bars
from shared.registry import Registry
from shared.transport.jobs import enqueue_validation, validation_queue
from tests.helpers import REPO, wait_for
from tests.integration.test_pipeline_faults import RedisServer
from tests.services.validator.test_validator import RUN, SYMBOL, TINY_MODEL, Env

pytestmark = [pytest.mark.redis, pytest.mark.slow]

SLOW_VALIDATOR = """
import os, sys, time
import shared.training as training
real = training.evaluate
def slow(*args, **kwargs):
    with open(os.environ["MZ_TEST_CALLS"], "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(float(os.environ.get("MZ_TEST_SLOW_S", "0")))
    return real(*args, **kwargs)
training.evaluate = slow
from services.validator.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def server(tmp_path):
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def env(tmp_path, server, monkeypatch):
    for key in list(os.environ):
        if key.startswith("MZ_"):
            monkeypatch.delenv(key)
    bars_path = tmp_path / "bars.duckdb"
    BarStore(bars_path).import_bars(SYMBOL, synthetic_bars("sine", 2500, seed=1))
    config = Config(
        data={"db_path": bars_path, "cache_dir": tmp_path / "cache"},
        env={"window": 16, "episode_length": 32},
        model=TINY_MODEL,
        search={"num_simulations": 2, "num_chance_codes": 4, "max_considered_actions": 2},
        pipeline={
            "redis_url": server.url,
            "database_url": f"sqlite:///{tmp_path}/registry.db",
            "run_id": RUN,
            "symbol": SYMBOL,
            "checkpoints_dir": tmp_path / "checkpoints",
            "best_dir": tmp_path / "best",
            "validation_queue": f"validation-{uuid.uuid4().hex[:8]}",
            "validation_chunks": 4,
            "validation_retries": 2,
            "validator_heartbeat_s": 1,  # abandoned after 3 s; registries cleaned every 3 s
        },
    )
    (tmp_path / "config.json").write_text(json.dumps(config.model_dump(mode="json")))
    registry = Registry(config.pipeline.database_url)
    registry.ensure_run(RUN, SYMBOL, config.model_dump(mode="json"))
    client = redis.Redis.from_url(server.url)
    yield Env(config, registry, client, tmp_path, "", set())
    client.close()
    registry.close()


class Validator:
    """One ``microzero validator`` process (through the slow wrapper)."""

    def __init__(self, env: Env, slow_s: float, name: str) -> None:
        self.log = env.tmp / f"{name}.log"
        self.calls = env.tmp / "evaluate-calls"
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("MZ_") and k != "REDIS_URL"}
        child_env |= {
            "MZ_TEST_SLOW_S": str(slow_s),
            "MZ_TEST_CALLS": str(self.calls),
            "PYTHONPATH": str(REPO),
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
        script = env.tmp / "slow_validator.py"
        script.write_text(SLOW_VALIDATOR)
        args = [sys.executable, str(script), "--config", str(env.tmp / "config.json"), "--metrics-port", "-1"]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                args, cwd=REPO, env=child_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def evaluate_calls(self) -> int:
        return len(self.calls.read_text().split()) if self.calls.exists() else 0

    def text(self) -> str:
        return self.log.read_text()[-4000:]

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # RQ's scheduler too
        self.process.wait()


def _job(env: Env, cid: int) -> Job:
    return Job.fetch(f"validate-{cid}", connection=env.redis, serializer=JSONSerializer)


def _validations(env: Env, cid: int) -> list[str]:
    return [v.status for v in env.registry.list_validations(checkpoint_id=cid)]


def test_sigterm_mid_job_hands_the_job_back_and_the_next_validator_runs_it(env):
    cid = env.checkpoint(10)
    enqueue_validation(env.redis, env.config, cid)
    first = Validator(env, slow_s=120, name="first")
    try:
        assert wait_for(lambda: first.evaluate_calls() == 1, timeout=60), first.text()
        assert _job(env, cid).get_status() == JobStatus.STARTED
        stopped_at = time.monotonic()
        first.process.send_signal(signal.SIGTERM)
        assert first.process.wait(20) == 0, first.text()
        assert time.monotonic() - stopped_at < 15  # did not wait out the 120 s validation
    finally:
        first.close()
    job = _job(env, cid)
    assert job.get_status() == JobStatus.QUEUED and job.retries_left == 2  # handed back, no retry consumed
    assert validation_queue(env.redis, env.config).job_ids == [job.id]
    assert not env.registry.list_validations(checkpoint_id=cid)  # nothing recorded for the interrupted run
    assert "handed back to the front" in first.text()

    second = Validator(env, slow_s=0, name="second")
    try:
        assert wait_for(lambda: _job(env, cid).get_status() == JobStatus.FINISHED, timeout=60), second.text()
        second.process.send_signal(signal.SIGTERM)
        assert second.process.wait(20) == 0, second.text()
    finally:
        second.close()
    assert _validations(env, cid) == ["ok"]


def test_redis_killed_while_a_validation_runs_the_validator_carries_on(env, server):
    """The validation finishes while Redis is down: RQ's loop quits; the validator must
    wait for Redis, hand the job back and carry on; the re-run finds the recorded
    validation (validated once) and the next job is validated as usual."""
    cid = env.checkpoint(10)
    enqueue_validation(env.redis, env.config, cid)
    validator = Validator(env, slow_s=4, name="validator")
    try:
        assert wait_for(lambda: validator.evaluate_calls() == 1, timeout=60), validator.text()
        server.stop(signal.SIGKILL)
        # The validation ends (4 s) and is recorded in SQL while Redis is away.
        assert wait_for(lambda: _validations(env, cid) == ["ok"], timeout=30), validator.text()
        time.sleep(2)
        assert validator.process.poll() is None, validator.text()
        server.start()  # same socket, same AOF
        env.redis.connection_pool.disconnect()
        assert wait_for(lambda: _job(env, cid).get_status() == JobStatus.FINISHED, timeout=60), validator.text()
        assert _job(env, cid).return_value()["already_validated"] is True
        # Carries on: a new job is validated by the same process.
        nxt = env.checkpoint(20)
        enqueue_validation(env.redis, env.config, nxt)
        assert wait_for(lambda: _job(env, nxt).get_status() == JobStatus.FINISHED, timeout=60), validator.text()
        assert validator.process.poll() is None
        validator.process.send_signal(signal.SIGTERM)
        assert validator.process.wait(20) == 0, validator.text()
    finally:
        validator.close()
    assert _validations(env, cid) == ["ok"] and _validations(env, nxt) == ["ok"]
    assert validator.evaluate_calls() == 2  # one backtest each: the re-run did not validate again
    assert "handed back" in validator.text()


def test_redis_hung_for_10_s_while_a_validation_runs_the_validator_recovers(env, server):
    """Redis SIGSTOPped for 10 s (longer than the validator's socket timeout) while a job
    runs and ends: the validator rides it out (timeouts, not RQ's 415 s), the job ends
    validated once, and the same process validates the next job promptly."""
    cid = env.checkpoint(10)
    enqueue_validation(env.redis, env.config, cid)
    validator = Validator(env, slow_s=3, name="validator")
    try:
        assert wait_for(lambda: validator.evaluate_calls() == 1, timeout=60), validator.text()
        server.hang(10)  # the validation ends (3 s) while Redis hangs
        resumed_at = time.monotonic()
        assert wait_for(lambda: _job(env, cid).get_status() == JobStatus.FINISHED, timeout=40), validator.text()
        nxt = env.checkpoint(20)
        enqueue_validation(env.redis, env.config, nxt)
        assert wait_for(lambda: _job(env, nxt).get_status() == JobStatus.FINISHED, timeout=40), validator.text()
        recovered_s = time.monotonic() - resumed_at
        assert validator.process.poll() is None, validator.text()
        validator.process.send_signal(signal.SIGTERM)
        assert validator.process.wait(20) == 0, validator.text()
    finally:
        validator.close()
    assert recovered_s < 30, f"{recovered_s:.1f} s after SIGCONT; {validator.text()}"
    assert _validations(env, cid) == ["ok"] and _validations(env, nxt) == ["ok"]
    assert validator.evaluate_calls() == 2  # a re-run after the hang found the validation recorded


def test_validator_sigkilled_mid_job_the_job_is_rerun_and_validated_once(env):
    cid = env.checkpoint(10)
    enqueue_validation(env.redis, env.config, cid)
    first = Validator(env, slow_s=120, name="first")
    try:
        assert wait_for(lambda: first.evaluate_calls() == 1, timeout=60), first.text()
        # `kill -9 <pid>` of the worker alone: its RQ scheduler child lives on, holding
        # the scheduler lock (under `microzero up` the whole group goes, and the next
        # scheduler waits for that lock to expire, up to 61 s).
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(10)
        assert _job(env, cid).get_status() == JobStatus.STARTED  # left "started" by the dead worker
        second = Validator(env, slow_s=0, name="second")
        try:
            # Abandoned after 3 missed heartbeats, found by the next registry cleanup,
            # retried through the scheduler (5 s).
            assert wait_for(lambda: _job(env, cid).get_status() == JobStatus.FINISHED, timeout=60), second.text()
            second.process.send_signal(signal.SIGTERM)
            assert second.process.wait(20) == 0, second.text()
        finally:
            second.close()
    finally:
        first.close()
    job = _job(env, cid)
    assert job.retries_left == 1  # the crash counted as one attempt
    assert _validations(env, cid) == ["ok"]
    assert job.return_value()["already_validated"] is False  # really validated by the second one
    assert Path(env.config.pipeline.best_dir, "best.pt").exists()
