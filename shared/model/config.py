"""Hyperparameters of the Stochastic MuZero networks (ARCHITECTURE.md §4).

The lead wires this into the main config as ``Config.model``; until then callers use
``ModelConfig()`` defaults. Field names avoid the ``model_`` prefix, which pydantic
reserves.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Observation: [window, input_features], oldest bar first (ARCHITECTURE §2).
    input_features: int = Field(15, ge=1, description="9 market features + 6 position-state columns")
    window: int = Field(64, ge=1, description="bars per observation (the chance encoder needs exactly this many)")

    # Causal TCN of the representation.
    tcn_channels: int = Field(48, ge=1)
    tcn_kernel: int = Field(3, ge=1)
    tcn_dilations: tuple[int, ...] = (1, 2, 4, 8)
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="TCN dropout (train mode only)")

    # Latent state and trunks.
    hidden: int = Field(256, ge=1, description="size of states and afterstates")
    residual_blocks: int = Field(3, ge=0, description="residual blocks of the representation")
    dynamics_blocks: int = Field(1, ge=0, description="residual blocks of each of the two dynamics functions")
    head_hidden: int = Field(
        96, ge=1, description="hidden width of the policy/value/reward/sigma/Q heads (sets the total near 1.3 M)"
    )
    encoder_hidden: int = Field(128, ge=1, description="hidden width of the chance encoder MLP")

    # Discrete spaces.
    actions: int = Field(4, ge=1)
    # 1 code = a deterministic MuZero (the dynamics always see the same code); the
    # `stochastic` experiment compares it with the default 16. On this market's bars 16
    # codes carry nothing: the codebook collapses to one code (perplexity 1.0) within
    # ~15 learner steps even on `regime`, whose trend flips at random, and at the small
    # size one code did as well (regime) or better (sine) (docs/RESULTS.md §0), so
    # `--small` uses 1. The full size keeps 16 until it is compared at that size.
    chance_codes: int = Field(16, ge=1, description="size of the one-hot chance codebook (1 = deterministic)")

    # Categorical scalars (value, reward, Q): `support_bins` bins spaced evenly in
    # h-space over [h(-support_max), h(support_max)] (see support.py). 41 bins over
    # h(300) = 16.65 is a spacing of 0.83 in h-space: a categorical head learns at about
    # unit spacing (601 bins: its correlation with the targets was 0.04 after 600 steps
    # on a fixed dataset, 41 bins 0.93); the two-hot projection keeps scalars exact.
    support_bins: int = Field(41, ge=3)
    support_max: float = Field(300.0, gt=0, description="largest representable |scalar|, in pips")
    h_epsilon: float = Field(0.001, gt=0, description="epsilon of h(x) = sign(x)(sqrt(|x|+1)-1) + eps*x")
    # Where targets are two-hot projected onto the bins and predictions averaged (see
    # support.py). "h" (MuZero's) learns h^-1(E[h(z)]), which shrinks the mean of noisy
    # targets toward 0; "pips" learns their mean. "pips" was not shown to help (validation,
    # 3 seeds on sine, 2 on the mean-reverting series, one machine): sine 4,456 against
    # 4,931 pips at 11.5 k env steps and 5,264 against 5,006 at 23 k, intervals overlapping;
    # on the mean-reverting series its Q did not follow the price's distance from its
    # level (correlation 0.11 and -0.01, against 0.43 and 0.41 with "h") and its values
    # ran optimistic (docs/RESULTS.md §0, "Support space").
    support_space: Literal["h", "pips"] = Field(
        "h", description="where targets are two-hot projected and predictions averaged: h-space (MuZero) or pips"
    )

    @field_validator("tcn_dilations")
    @classmethod
    def _positive_dilations(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(d < 1 for d in value):
            raise ValueError(f"tcn_dilations must be a non-empty list of positive integers, got {list(value)}")
        return value

    @property
    def receptive_field(self) -> int:
        """Bars of history one TCN output can see (itself included)."""
        return 1 + (self.tcn_kernel - 1) * sum(self.tcn_dilations)
