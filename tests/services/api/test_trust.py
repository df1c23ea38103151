"""Hostile best-channel announcements: the API loads only checkpoints the registry knows,
from the configured folders, whose bytes hash to the registry's sha256.

Anyone who can write to Redis can publish on the best channel; each announcement here
must be refused, logged, and leave the served model unchanged.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import pytest
import redis
import torch

from services.api.app import create_app
from shared.bench_api import sample_act_payload
from shared.learning.checkpoint import save_checkpoint
from shared.model.networks import StochasticMuZeroNet
from shared.registry import Registry
from shared.transport.keys import RedisKeys
from tests.helpers import LiveServer, wait_for
from tests.services.api.test_api import REDIS_URL, make_config

pytestmark = pytest.mark.redis


def _save(path: Path, config, seed: int) -> str:
    torch.manual_seed(seed)
    return save_checkpoint(path, StochasticMuZeroNet(config.model), seed)


def test_hostile_announcements_are_refused(tmp_path, caplog):
    prefix = f"test-trust-{uuid.uuid4().hex[:10]}"
    config = make_config(tmp_path, "trust", redis_prefix=prefix, api_token="t0ken")
    keys = RedisKeys.from_config(config)
    registry = Registry(config.pipeline.database_url)
    registry.ensure_run("test", "EURUSD", {})
    ckpts = tmp_path / "ckpts"
    good = ckpts / "ckpt-000000001.pt"
    good_id = registry.add_checkpoint("test", 1, str(good), _save(good, config, 1))
    registry.set_best(good_id, str(good))
    outside = tmp_path / "elsewhere" / "ckpt-000000002.pt"  # a valid checkpoint, outside the folders
    outside_sha = _save(outside, config, 2)
    r = redis.Redis.from_url(REDIS_URL)
    app = create_app(config, keys=keys, poll_interval_s=60.0, device="cpu")
    state = app.state.api

    def announce(checkpoint_id: int, path: Path, expect: str) -> None:
        caplog.clear()
        r.publish(keys.best_channel, json.dumps({"checkpoint_id": checkpoint_id, "path": str(path)}))
        assert wait_for(lambda: expect in caplog.text, 10), (expect, caplog.text)
        assert state.holder.current.checkpoint_id == good_id
        assert client.post("/v1/act", json=sample_act_payload()).json()["checkpoint_id"] == good_id

    try:
        with caplog.at_level(logging.WARNING), LiveServer(app) as client:
            assert state.holder.current.checkpoint_id == good_id
            # 1. An unregistered file outside the folders, under an unknown id.
            announce(999_999, outside, "refusing best checkpoint 999999")
            # 2. A registered checkpoint's id with another path.
            announce(good_id, outside, f"refusing the path {outside} announced for checkpoint {good_id}")
            # 3. A registered checkpoint outside the folders, even when the registry calls it the best.
            outside_id = registry.add_checkpoint("test", 2, str(outside), outside_sha)
            registry.set_best(outside_id, str(outside))
            announce(outside_id, outside, "outside the checkpoint folders")
            promote = client.post(f"/checkpoints/{outside_id}/promote", headers={"Authorization": "Bearer t0ken"})
            assert promote.status_code == 409 and "outside the checkpoint folders" in promote.json()["detail"]
            # 4. A registered checkpoint whose file was swapped (sidecar too, so only the
            #    registry's sha256 can tell).
            tampered = ckpts / "ckpt-000000003.pt"
            tampered_id = registry.add_checkpoint("test", 3, str(tampered), _save(tampered, config, 3))
            _save(tampered, config, 4)
            registry.set_best(tampered_id, str(tampered))
            announce(tampered_id, tampered, "differs from the registry's")
            # 5. A symlink inside the folders pointing outside them.
            link = ckpts / "ckpt-000000005.pt"
            link.symlink_to(outside)
            Path(f"{link}.sha256").symlink_to(Path(f"{outside}.sha256"))
            link_id = registry.add_checkpoint("test", 5, str(link), outside_sha)
            registry.set_best(link_id, str(link))
            announce(link_id, link, "outside the checkpoint folders")
    finally:
        for key in r.scan_iter(match=prefix + ":*"):
            r.delete(key)
        r.close()
        registry.close()


def test_without_registry_announcements_load_nothing(tmp_path, caplog):
    prefix = f"test-trust-{uuid.uuid4().hex[:10]}"
    config = make_config(tmp_path, "noreg", redis_prefix=prefix)
    config.pipeline.database_url = "postgresql+psycopg2://nobody:x@127.0.0.1:1/none?connect_timeout=1"
    keys = RedisKeys.from_config(config)
    inside = tmp_path / "ckpts" / "ckpt-000000001.pt"  # even a valid file inside the folders
    _save(inside, config, 1)
    r = redis.Redis.from_url(REDIS_URL)
    app = create_app(config, keys=keys, poll_interval_s=60.0, device="cpu")
    try:
        with caplog.at_level(logging.WARNING), LiveServer(app):
            r.publish(keys.best_channel, json.dumps({"checkpoint_id": 1, "path": str(inside)}))
            assert wait_for(lambda: "the registry is unavailable and only checkpoints it records" in caplog.text, 10)
            assert app.state.api.holder.current is None
    finally:
        r.close()
