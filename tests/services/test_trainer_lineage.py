"""Checkpoint lineage across resumes, through the real Trainer, Redis and a SQLite registry.

The newest checkpoint is corrupted; the restarted trainer resumes from the one before and
re-reaches the corrupt checkpoint's step. It must not overwrite the registered file, must
record its own checkpoint (under a forked run, since the registry keys (run, step)) and
publish only that registered checkpoint; retention then trims the folder.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest

from services.trainer.loop import Trainer, default_checkpoint_hook
from shared.learning.checkpoint import load_checkpoint
from shared.market import open_market
from shared.registry import Registry
from shared.transport.connection import connect
from shared.transport.streams import EpisodeStream, read_model
from tests.services.test_collector_trainer import REDIS_URL, tiny_config, warmup_episodes

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.redis]


@pytest.fixture
def setup(data_dir, tmp_path):
    prefix = f"test:lineage:{uuid.uuid4().hex[:10]}"
    client = connect(REDIS_URL)
    config = tiny_config(data_dir, tmp_path, REDIS_URL, prefix)
    yield config, open_market(config, config.pipeline.symbol), client
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        client.delete(key)
    client.close()


def _train(config, market, client, registry, max_steps: int, enqueued: list) -> Trainer:
    hook = default_checkpoint_hook(config, client, registry=registry, enqueue=lambda r, c, cid: enqueued.append(cid))
    trainer = Trainer(config, threading.Event(), client=client, market=market, max_steps=max_steps, on_checkpoint=hook)
    trainer.run()
    return trainer


def test_resume_from_older_checkpoint_forks_instead_of_overwriting(setup):
    config, market, client = setup
    registry = Registry(config.pipeline.database_url)
    stream = EpisodeStream(client, config.pipeline.episode_stream, config.pipeline.stream_maxlen)
    enqueued: list[int] = []
    try:
        stream.publish_many(warmup_episodes(config, market, n_batches=2, seed=0))
        first = _train(config, market, client, registry, 7, enqueued)
        assert [step for step, *_ in first.stats.checkpoints] == [5, 7]
        old5, old7 = (registry.checkpoints_by_paths([p])[p] for _, p, _ in first.stats.checkpoints)
        assert old7.run_id == "test-run" and f"-{first.lineage}.pt" in old7.path
        corrupt = Path(old7.path).read_bytes()[:-100]
        Path(old7.path).write_bytes(corrupt)  # the newest checkpoint is corrupt

        config.pipeline.checkpoint_keep_last = 2  # retention: 5 goes once the new 7 exists
        config.pipeline.checkpoint_keep_unvalidated = 0
        stream.publish_many(warmup_episodes(config, market, n_batches=2, seed=1))
        second = _train(config, market, client, registry, 7, enqueued)
        assert second.stats.resumed_from == 5 and second.lineage != first.lineage
        [(step, path, sha256)] = second.stats.checkpoints
        assert step == 7 and path != old7.path
        assert Path(old7.path).read_bytes() == corrupt  # the registered file was not overwritten
        assert load_checkpoint(path).sha256 == sha256

        new7 = registry.checkpoints_by_paths([path])[path]
        assert new7.sha256 == sha256 and new7.step == 7 and new7.run_id == f"test-run@{second.lineage}"
        fork = registry.get_run(new7.run_id)
        assert fork.config["lineage"] == {"parent_run": "test-run", "forked_at_step": 7}
        published = read_model(client, config.pipeline.model_key)
        assert (published["version"], published["path"], published["checkpoint_id"]) == (7, path, new7.id)
        assert published["sha256"] == sha256
        assert enqueued == [old5.id, old7.id, old5.id, new7.id]  # the restored 5 is re-announced, not re-recorded

        # Retention kept the newest two files (new 7, the corrupt 7) and deleted 5.
        assert not Path(old5.path).exists() and not Path(f"{old5.path}.sha256").exists()
        assert registry.get_checkpoint(old5.id).pruned_at is not None
        assert registry.get_checkpoint(new7.id).pruned_at is None

        # Restarted again: it resumes from the fork's checkpoint and stays in its run.
        third = _train(config, market, client, registry, 7, enqueued)
        assert third.stats.resumed_from == 7 and third.stats.checkpoints == []
        assert registry.count_checkpoints() == 3 and enqueued[-1] == new7.id
        assert read_model(client, config.pipeline.model_key)["checkpoint_id"] == new7.id
    finally:
        registry.close()
