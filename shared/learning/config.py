"""Hyperparameters of the learner (ARCHITECTURE.md §6), every one visible here.

Choices not fixed by the architecture, and why:

* ``priority_alpha=0.6, priority_beta=0.4`` (Schaul et al. 2016) rather than MuZero's
  1.0/1.0: forex returns are mostly noise, so |v - z| is large on noisy positions
  through no fault of the model; a sub-linear alpha keeps replay from fixating on them
  and a small beta keeps the importance weights from shrinking most samples to ~0.
* ``initial_priority="td"``: a new position enters with |root value - n-step target|,
  as in MuZero (App. G); "max" (Ape-X/PER: the largest priority seen so far) is offered
  for runs where root values are meaningless (warm-up episodes have no search).
* ``samples_per_insert=8``: each inserted position is sampled ~8 times on average
  before it is evicted, i.e. 8 x 360 / 64 = 45 learner steps per 360-bar episode.
* Loss weights: value and Q at 0.25 (MuZero Reanalyse's value weight, which curbs
  overfitting of the n-step targets), commitment 0.25 (VQ-VAE's beta), others 1.
* ``state_gradient_scale=0.5``: MuZero's ``scale_gradient(state, 0.5)`` after each
  recurrent step, so the gradient reaching the representation from deep unroll steps
  stays bounded; every prediction made by the recurrent functions is weighted 1/unroll.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class LearningConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Replay.
    replay_capacity: int = Field(100_000, ge=1, description="positions held; oldest whole episodes evicted first")
    priority_alpha: float = Field(0.6, ge=0, description="P(i) ~ p_i^alpha (0 = uniform)")
    priority_beta: float = Field(0.4, ge=0, description="importance weight (N P(i))^-beta, normalised by the batch max")
    priority_epsilon: float = Field(1e-3, gt=0, description="floor of a priority, pips")
    initial_priority: Literal["td", "max"] = "td"
    samples_per_insert: float = Field(8.0, gt=0, description="positions sampled per position inserted")
    samples_per_insert_tolerance: float = Field(
        10_000, ge=0, description="positions the sample count may drift from the ratio before one side waits"
    )
    min_replay_positions: int = Field(2_000, ge=1, description="no learning before the buffer holds this many")

    # Targets and unroll.
    td_steps: int = Field(10, ge=1)
    discount: float = Field(0.997, gt=0, le=1)
    unroll_steps: int = Field(5, ge=1)

    # Optimisation.
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(1e-5, ge=0, description="Adam's L2 penalty")
    grad_clip: float = Field(10.0, gt=0, description="max global gradient norm")
    state_gradient_scale: float = Field(0.5, ge=0, le=1)

    # Loss weights.
    policy_weight: float = Field(1.0, ge=0)
    value_weight: float = Field(0.25, ge=0)
    reward_weight: float = Field(1.0, ge=0)
    q_weight: float = Field(0.25, ge=0)
    sigma_weight: float = Field(1.0, ge=0)
    commitment_weight: float = Field(0.25, ge=0)
