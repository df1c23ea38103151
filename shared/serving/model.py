"""A verified checkpoint, loaded for greedy search: what the API serves and an
:class:`shared.agent.Agent` holds.

Loading goes through :func:`shared.learning.checkpoint.load_checkpoint` (the sha256
sidecar is checked and ``torch.load(weights_only=True)`` reads the file); an
`expected_sha256` (the registry's) must match too. The search settings are the
validator's: no root noise, acting on the best action.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch

from shared.config import Config, SearchConfig
from shared.device import pick_device
from shared.learning.checkpoint import CheckpointError, load_checkpoint
from shared.model.networks import StochasticMuZeroNet
from shared.serving.observation import OBS_FEATURES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckpointInfo:
    """Which checkpoint answered: its registry id (None when loaded from a bare path),
    learner step, file and sha256."""

    id: int | None
    step: int
    path: Path
    sha256: str


@dataclass(frozen=True)
class ServedModel:
    model: StochasticMuZeroNet  # eval mode, on `device`
    checkpoint_id: int | None
    step: int
    path: Path
    sha256: str
    device: torch.device
    search: SearchConfig  # greedy: no root noise, argmax acting
    loaded_at: datetime
    config: Config  # the caller's config with the feature settings the checkpoint was trained on

    @property
    def info(self) -> CheckpointInfo:
        return CheckpointInfo(self.checkpoint_id, self.step, self.path, self.sha256)


def greedy_search_config(config: Config, chance_codes: int) -> SearchConfig:
    """config.search without root noise, acting on the best action (as the validator does)."""
    return config.search.model_copy(
        update={"gumbel_scale": 0.0, "dirichlet_fraction": 0.0, "temperature": 0.0, "num_chance_codes": chance_codes}
    )


def load_served_model(
    path: str | Path,
    checkpoint_id: int | None,
    config: Config,
    device: torch.device | str | None = None,
    expected_sha256: str | None = None,
) -> ServedModel:
    """Verify and load a checkpoint into an eval-mode model; CheckpointError on any problem."""
    device = pick_device(device)
    ckpt = load_checkpoint(path, map_location="cpu")  # verifies the sha256 sidecar, weights_only
    if expected_sha256 and ckpt.sha256 != expected_sha256:
        raise CheckpointError(
            f"checkpoint {path}: sha256 {ckpt.sha256[:16]}... differs from the registry's {expected_sha256[:16]}..."
        )
    try:
        cfg = ckpt.model_config()
        if cfg.window != config.env.window or cfg.input_features != OBS_FEATURES:
            raise CheckpointError(
                f"checkpoint {path}: model expects [{cfg.window}, {cfg.input_features}] observations, "
                f"this config builds [{config.env.window}, {OBS_FEATURES}]"
            )
        features = ckpt.features_config()
        model = StochasticMuZeroNet(cfg)
        model.load_state_dict(ckpt.state_dict, strict=True)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path}: does not fit the model ({type(exc).__name__}: {exc})") from exc
    if features is not None and features != config.features:
        # The network must see the inputs it was trained on (lookback, time features).
        log.info("checkpoint %s: using its feature settings %s", path, features.model_dump())
        config = config.model_copy(update={"features": features})
    model.to(device).eval()
    return ServedModel(
        model=model,
        checkpoint_id=checkpoint_id,
        step=ckpt.step,
        path=Path(path),
        sha256=ckpt.sha256,
        device=device,
        search=greedy_search_config(config, cfg.chance_codes),
        loaded_at=datetime.now(UTC),
        config=config,
    )
