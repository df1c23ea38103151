"""A validator's promotion races ``POST /checkpoints/{id}/promote``: both go through the
one promotion path (``shared.checkpoint_store.promote``), so afterwards the best file,
its sha256 sidecar, the registry's best and the served model always agree."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest
import torch

from services.api.app import create_app
from services.validator.job import update_best
from shared.config import Config
from shared.learning.checkpoint import save_checkpoint
from shared.model.networks import StochasticMuZeroNet
from shared.registry import Registry
from tests.helpers import LiveServer, wait_for

TOKEN = "race-token"
TINY_MODEL = {"tcn_channels": 8, "hidden": 32, "head_hidden": 16, "encoder_hidden": 16, "residual_blocks": 1}
ROUNDS = 6


@pytest.fixture
def config(tmp_path, monkeypatch) -> Config:
    monkeypatch.delenv("REDIS_URL", raising=False)  # the API polls the registry; no Redis needed
    return Config(
        model=TINY_MODEL,
        search={"num_simulations": 2},
        pipeline={
            "database_url": f"sqlite:///{tmp_path / 'registry.db'}",
            "best_dir": str(tmp_path / "best"),
            "checkpoints_dir": str(tmp_path / "ckpts"),  # the API serves only files in these two folders
            "api_token": TOKEN,
            "best_history": 3,
        },
    )


def _checkpoint(registry: Registry, config: Config, tmp: Path, step: int) -> int:
    torch.manual_seed(step)
    path = tmp / "ckpts" / f"ckpt-{step:09d}.pt"
    sha = save_checkpoint(path, StochasticMuZeroNet(config.model), step)
    return registry.add_checkpoint("race", step, str(path), sha)


def _agreement(client, registry: Registry, best_file: Path) -> tuple:
    """(registry best id, its sha256, best.pt's sha256, the sidecar's, served id, served sha256)."""
    best = registry.best_checkpoint()
    data = best_file.read_bytes()
    sidecar = Path(f"{best_file}.sha256").read_text().split()[0]
    served = client.get("/status").json()["served_model"] or {}
    return (
        best.id,
        best.sha256,
        hashlib.sha256(data).hexdigest(),
        sidecar,
        served.get("checkpoint_id"),
        served.get("sha256"),
    )


def _agrees(state: tuple) -> bool:
    best_id, best_sha, file_sha, sidecar_sha, served_id, served_sha = state
    return best_sha == file_sha == sidecar_sha == served_sha and best_id == served_id


def test_validator_and_promote_endpoint_race_to_one_agreed_best(config, tmp_path):
    registry = Registry(config.pipeline.database_url)  # the API's and the test's view
    validator_registry = Registry(config.pipeline.database_url)  # the validator's own connection
    registry.ensure_run("race", "EURUSD", {})
    best_file = Path(config.pipeline.best_dir) / "best.pt"
    app = create_app(config, poll_interval_s=0.1, device="cpu")
    winners = set()
    try:
        with LiveServer(app) as client:
            for i in range(ROUNDS):
                by_validator = _checkpoint(registry, config, tmp_path, 1000 + 2 * i)
                by_api = _checkpoint(registry, config, tmp_path, 1001 + 2 * i)
                score = float(i + 1)  # beats the previous round's validated best
                registry.add_validation(
                    by_validator,
                    "ok",
                    score=score,
                    metrics={"trades": 5},
                    error=None,
                    split="validation",
                    duration_s=0.1,
                )
                barrier = threading.Barrier(2)
                results: dict[str, object] = {}

                def validator(
                    cid: int = by_validator, s: float = score, barrier: threading.Barrier = barrier, results=results
                ) -> None:
                    barrier.wait()
                    record = validator_registry.get_checkpoint(cid)
                    results["validator"] = update_best(validator_registry, config, record, s)

                def api(cid: int = by_api, barrier: threading.Barrier = barrier, results=results) -> None:
                    barrier.wait()
                    results["api"] = client.post(
                        f"/checkpoints/{cid}/promote", headers={"Authorization": f"Bearer {TOKEN}"}
                    ).status_code

                threads = [threading.Thread(target=validator), threading.Thread(target=api)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(60)
                assert results == {"validator": True, "api": 200}, results

                state = wait_for(
                    lambda: (
                        _agrees(_agreement(client, registry, best_file)) and _agreement(client, registry, best_file)
                    ),
                    timeout=15,
                    every=0.05,
                )
                assert state, f"round {i}: no agreement: {_agreement(client, registry, best_file)}"
                assert state[0] in (by_validator, by_api)
                winners.add("validator" if state[0] == by_validator else "api")
                assert registry.best_checkpoint().best_path == str(best_file.resolve())
            history = list((Path(config.pipeline.best_dir) / "history").glob("*.pt"))
            assert len(history) == config.pipeline.best_history  # both promotions keep history
    finally:
        registry.close()
        validator_registry.close()
