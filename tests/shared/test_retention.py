"""Checkpoint names, lineage registration and retention (no Redis needed)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
import torch

from shared.config import Config
from shared.learning.checkpoint import checkpoint_files, checkpoint_path, latest_checkpoint, save_checkpoint
from shared.lineage import Lineage
from shared.model import ModelConfig
from shared.model.networks import StochasticMuZeroNet
from shared.registry import Registry
from shared.retention import prune_checkpoints

TINY = ModelConfig(tcn_channels=4, hidden=8, head_hidden=8, encoder_hidden=8, residual_blocks=1)


def _save(path: Path, step: int, **kwargs) -> str:
    torch.manual_seed(step)
    return save_checkpoint(path, StochasticMuZeroNet(TINY), step, **kwargs)


def test_names_carry_the_lineage_and_are_never_overwritten(tmp_path):
    old = checkpoint_path(tmp_path, 7)
    a = checkpoint_path(tmp_path, 7, "aaaa1111")
    assert a.name == "ckpt-000000007-aaaa1111.pt"
    with pytest.raises(ValueError):
        checkpoint_path(tmp_path, 7, "../x")
    _save(old, 7)
    sha = _save(a, 7, exclusive=True)
    with pytest.raises(FileExistsError):
        _save(a, 8, exclusive=True)  # a second write under the same name is refused ...
    assert Path(f"{a}.sha256").read_text().split()[0] == sha  # ... leaving file and sidecar intact
    _save(checkpoint_path(tmp_path, 5, "bbbb2222"), 5)
    os.utime(old, ns=(1, 1))  # written long ago
    assert [p.name for p in checkpoint_files(tmp_path)] == [a.name, old.name, "ckpt-000000005-bbbb2222.pt"]
    assert latest_checkpoint(tmp_path) == a
    assert not list(tmp_path.glob(".*.tmp"))  # no temp files left behind


def test_lineage_forks_on_a_taken_step_and_refuses_a_replaced_file(tmp_path):
    registry = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    first = Lineage(registry, "run", "EURUSD", {"x": 1}, "aaaa")
    p5, p7 = tmp_path / "ckpt-5-aaaa.pt", tmp_path / "ckpt-7-aaaa.pt"
    id5, id7 = first.register(5, p5, "5" * 64), first.register(7, p7, "7" * 64)
    assert first.register(7, p7, "7" * 64) == id7 and registry.count_checkpoints() == 2
    with pytest.raises(ValueError, match="the file was replaced"):
        first.register(7, p7, "f" * 64)

    resumed = Lineage(registry, "run", "EURUSD", {"x": 1}, "bbbb")
    assert resumed.register(5, p5, "5" * 64) == id5 and resumed.run_id == "run"  # the restored one
    new7 = resumed.register(7, tmp_path / "ckpt-7-bbbb.pt", "e" * 64)
    assert registry.get_checkpoint(new7).run_id == "run@bbbb" == resumed.run_id
    assert registry.get_run("run@bbbb").config == {"x": 1, "lineage": {"parent_run": "run", "forked_at_step": 7}}
    later = resumed.register(10, tmp_path / "ckpt-10-bbbb.pt", "a" * 64)
    assert registry.get_checkpoint(later).run_id == "run@bbbb"  # the lineage stays forked
    again = Lineage(registry, "run", "EURUSD", {"x": 1}, "cccc")  # restarted from the fork's newest
    assert again.register(10, tmp_path / "ckpt-10-bbbb.pt", "a" * 64) == later and again.run_id == "run@bbbb"
    registry.close()


def test_retention_keeps_newest_best_candidate_and_unvalidated(tmp_path):
    config = Config(
        pipeline={
            "database_url": f"sqlite:///{tmp_path / 'r.db'}",
            "best_dir": str(tmp_path / "best"),
            "checkpoint_keep_last": 3,
            "checkpoint_keep_unvalidated": 2,
        }
    )
    registry = Registry(config.pipeline.database_url)
    registry.ensure_run("run", "EURUSD", {})
    folder = tmp_path / "run"
    ids = {}
    for step in range(1, 13):
        path = checkpoint_path(folder, step, "abcd")
        ids[step] = registry.add_checkpoint("run", step, str(path), _save(path, step))

    def validate(step: int, score: float | None, status: str = "ok") -> None:
        registry.add_validation(
            ids[step], status, score=score, metrics=None, error=None, split="validation", duration_s=1.0
        )

    for step in (1, 2, 3, 4, 6, 7, 10, 11, 12):
        validate(step, 1.0)
    validate(3, 2.0)
    registry.set_best(ids[3], str(folder / "best-copy.pt"))  # the best: 3 (score 2.0)
    validate(4, 5.0)  # beats the best: about to be promoted
    validate(7, None, "failed")  # failed: still awaiting a good validation
    stranger = folder / "ckpt-000000000-zzzz.pt"  # not in the registry
    _save(stranger, 0)

    deleted = prune_checkpoints(registry, config, folder)
    kept = {step for step in ids if checkpoint_path(folder, step, "abcd").exists()}
    # newest 3 (10-12), the best (3), the candidate (4), newest 2 unvalidated (9, 8 -- of 9, 8, 7, 5)
    assert kept == {3, 4, 8, 9, 10, 11, 12}
    assert {p.name for p in deleted} == {checkpoint_path(folder, s, "abcd").name for s in (1, 2, 5, 6, 7)}
    assert stranger.exists()
    for step in ids:
        sidecar = Path(f"{checkpoint_path(folder, step, 'abcd')}.sha256")
        assert sidecar.exists() == (step in kept)
        assert (registry.get_checkpoint(ids[step]).pruned_at is None) == (step in kept)
    assert prune_checkpoints(registry, config, folder) == []  # idempotent
    registry.close()


def test_registry_adds_pruned_at_to_an_older_database(tmp_path):
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:  # the checkpoints table as created before pruned_at existed
        conn.execute(
            "CREATE TABLE runs (id VARCHAR(200) PRIMARY KEY, symbol VARCHAR(32), config JSON, created_at DATETIME)"
        )
        conn.execute(
            "CREATE TABLE checkpoints (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id VARCHAR(200) REFERENCES runs(id), "
            "step INTEGER, path TEXT, sha256 VARCHAR(64), created_at DATETIME, is_best BOOLEAN, best_path TEXT, "
            "CONSTRAINT uq_checkpoints_run_step UNIQUE (run_id, step))"
        )
        conn.execute("INSERT INTO runs VALUES ('r', 'EURUSD', '{}', '2024-01-01 00:00:00')")
        conn.execute(
            "INSERT INTO checkpoints VALUES (1, 'r', 5, '/x.pt', '" + "a" * 64 + "', '2024-01-01 00:00:00', 0, NULL)"
        )
    registry = Registry(f"sqlite:///{db}")
    assert registry.get_checkpoint(1).pruned_at is None
    registry.mark_pruned([1])
    assert registry.get_checkpoint(1).pruned_at is not None
    registry.close()
    Registry(f"sqlite:///{db}").close()  # opening again adds nothing twice
