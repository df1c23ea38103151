"""One optimisation step of Stochastic MuZero, and the samples-per-insert controller."""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from shared.config import FeatureConfig, LearningConfig, SearchConfig
from shared.learning.checkpoint import Checkpoint, CheckpointError, save_checkpoint
from shared.learning.losses import stochastic_muzero_loss
from shared.learning.reanalyse import refresh_targets
from shared.learning.replay import Batch, ReplayBuffer
from shared.model import StochasticMuZeroNet

log = logging.getLogger(__name__)


class SamplesPerInsert:
    """Keeps learner and collectors in step: sampled ~= ratio x inserted (in positions).

    Like Reverb's SampleToInsertRatio: sampling waits while it is more than `tolerance`
    positions ahead of the ratio (or the buffer holds fewer than `min_size`), inserting
    waits while sampling is more than `tolerance` behind.
    """

    def __init__(self, ratio: float, min_size: int = 1, tolerance: float = 0.0) -> None:
        if ratio <= 0:
            raise ValueError(f"samples-per-insert ratio must be > 0, got {ratio}")
        self.ratio, self.min_size, self.tolerance = ratio, min_size, tolerance

    @classmethod
    def from_config(cls, config: LearningConfig) -> SamplesPerInsert:
        return cls(config.samples_per_insert, config.min_replay_positions, config.samples_per_insert_tolerance)

    def can_sample(self, inserted: int, sampled: int, batch_size: int = 1) -> bool:
        return inserted >= self.min_size and sampled + batch_size <= self.ratio * inserted + self.tolerance

    def allowed_steps(self, inserted: int, sampled: int, batch_size: int) -> int:
        """Learner steps of `batch_size` positions allowed now."""
        if inserted < self.min_size:
            return 0
        return max(0, math.floor((self.ratio * inserted + self.tolerance - sampled) / batch_size))

    def can_insert(self, inserted: int, sampled: int) -> bool:
        return inserted < self.min_size or self.ratio * inserted - sampled <= self.tolerance


def learning_rate(config: LearningConfig, step: int) -> float:
    """Adam's step size at learner step `step`: `lr`, falling along half a cosine to
    ``lr * lr_final_fraction`` at ``lr_decay_steps`` and staying there (SGDR's shape,
    without restarts). Computed from the step count alone, so a resumed run follows the
    same schedule as an uninterrupted one. Not torch's CosineAnnealingLR: past its
    T_max that one rises again, and its state would have to travel in the checkpoint."""
    if config.lr_decay_steps == 0:
        return config.lr
    progress = min(step, config.lr_decay_steps) / config.lr_decay_steps
    final = config.lr * config.lr_final_fraction
    return final + (config.lr - final) * 0.5 * (1 + math.cos(math.pi * progress))


class Learner:
    """Adam on the Stochastic MuZero loss, with a target network for fresh targets
    (``reanalyse.py``); optional TensorBoard logging to `log_dir`.

    `search` is the search Reanalyse runs (the self-play settings; its discount and
    codebook are taken from `config` and the model)."""

    def __init__(
        self,
        model: StochasticMuZeroNet,
        config: LearningConfig,
        device: torch.device | str = "cpu",
        log_dir: str | Path | None = None,
        search: SearchConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.config = config
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.steps = 0
        self.last_priorities: np.ndarray | None = None
        self.writer = _summary_writer(log_dir) if log_dir is not None else None
        self.search = (search or SearchConfig()).model_copy(
            update={"discount": config.discount, "num_chance_codes": model.cfg.chance_codes}
        )
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.target = copy.deepcopy(model).eval().requires_grad_(False)
        self.searched_roots = 0  # positions searched anew for targets (Reanalyse, search bootstraps), in all

    def sync_target(self) -> None:
        """Copy the learner's weights into the target network."""
        self.target.load_state_dict(self.model.state_dict())

    def step(self, batch: Batch, replay: ReplayBuffer | None = None) -> dict[str, float]:
        """One update on `batch` (numpy); writes new priorities back to `replay` if given."""
        cfg = self.config
        if self.steps % cfg.target_update_interval == 0:
            self.sync_target()
        started = time.perf_counter()
        batch, searched = refresh_targets(
            self.target,
            batch.to(self.device),
            bootstrap=cfg.value_bootstrap,
            fraction=cfg.reanalyse_fraction,
            search=self.search,
            generator=self.generator,
        )
        refresh_s = time.perf_counter() - started
        self.searched_roots += searched
        self.model.train()
        out = stochastic_muzero_loss(self.model, batch, cfg)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, self.steps)
        self.optimizer.step()
        self.steps += 1
        self.last_priorities = out.priorities
        if replay is not None:
            replay.update_priorities(batch.indices, out.priorities)
        metrics = dict(
            out.metrics,
            grad_norm=float(grad_norm),
            lr=self.optimizer.param_groups[0]["lr"],
            searched_roots=float(searched),
            target_refresh_s=refresh_s,
        )
        if self.writer is not None:
            for name, value in metrics.items():
                self.writer.add_scalar(f"learner/{name}", value, self.steps)
            if out.code_histogram.sum() > 0:
                codes = np.repeat(np.arange(len(out.code_histogram)), out.code_histogram)
                self.writer.add_histogram("learner/chance_codes", codes, self.steps)
        return metrics

    def save(self, path: str | Path, features_config: FeatureConfig | None = None, *, exclusive: bool = False) -> str:
        """Checkpoint model, optimizer and step count atomically; returns the file's sha256.
        `features_config` records the inputs the model was trained on; `exclusive`: never
        replace an existing file (FileExistsError)."""
        return save_checkpoint(
            path,
            self.model,
            self.steps,
            learning_config=self.config,
            features_config=features_config,
            optimizer=self.optimizer,
            exclusive=exclusive,
        )

    def restore(self, checkpoint: Checkpoint) -> None:
        """Resume from a loaded checkpoint (weights, optimizer state if saved, step count).

        Refused when the checkpoint's model settings differ from this model's: weights of
        the same shapes would load, but mean something else (e.g. another support space).
        """
        saved, current = checkpoint.model_config().model_dump(), self.model.cfg.model_dump()
        changed = sorted(name for name in current if saved.get(name) != current[name])
        if changed:
            detail = ", ".join(f"{name} {saved.get(name)!r} -> {current[name]!r}" for name in changed)
            raise CheckpointError(
                f"checkpoint {checkpoint.path} was trained with other model settings ({detail}); "
                "train into a new folder, or set them back"
            )
        self.model.load_state_dict(checkpoint.state_dict)
        if checkpoint.optimizer is not None:
            self.optimizer.load_state_dict(checkpoint.optimizer)
        self.steps = checkpoint.step
        self.sync_target()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def train(self, replay: ReplayBuffer, steps: int) -> list[dict[str, float]]:
        """`steps` updates on batches sampled from `replay`, priorities written back."""
        return [self.step(replay.sample(self.config.batch_size), replay) for _ in range(steps)]


def _summary_writer(log_dir: str | Path):
    """A TensorBoard SummaryWriter, or None when the `tensorboard` package is absent."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.info("tensorboard is not installed; learner metrics are not written to %s", log_dir)
        return None
    return SummaryWriter(str(log_dir))
