"""Learning part of Stochastic MuZero (ARCHITECTURE.md §6): replay, targets, loss, learner, checkpoints."""

from shared.config import LearningConfig
from shared.learning.checkpoint import (
    Checkpoint,
    CheckpointError,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from shared.learning.learner import Learner, SamplesPerInsert, learning_rate
from shared.learning.losses import LossOutput, stochastic_muzero_loss
from shared.learning.replay import Batch, ReplayBuffer
from shared.learning.targets import n_step_returns, n_step_targets

__all__ = [
    "Batch",
    "Checkpoint",
    "CheckpointError",
    "Learner",
    "LearningConfig",
    "LossOutput",
    "ReplayBuffer",
    "SamplesPerInsert",
    "checkpoint_path",
    "latest_checkpoint",
    "learning_rate",
    "load_checkpoint",
    "n_step_returns",
    "n_step_targets",
    "save_checkpoint",
    "stochastic_muzero_loss",
]
