"""Fresh targets at sample time: value bootstraps and Reanalyse (Schrittwieser et al.
2021, "Online and offline RL by planning with a learned model"; Ye et al. 2021,
EfficientZero).

Both run the *target network*, a copy of the learner's weights refreshed every
``learning.target_update_interval`` steps, in eval mode and without gradient:

* :func:`bootstrap_values` completes every n-step value target of a batch,
  z = reward_sum + gamma^m v(s_{t+k+m}), with v from the target network on the
  bootstrap observations the replay sampled. Warm-up episodes (no search, no values)
  and old episodes (values of an old policy) get the current network's estimate.
* :func:`reanalyse_policies` replaces the policy targets of the first ``fraction`` of
  the batch's positions (the batch is an i.i.d. draw, so its first rows are a random
  subset) by the improved policy of a new batched search from each of their unroll
  steps inside the episode: one :func:`run_search` call over all those roots.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor

from shared.config import SearchConfig
from shared.learning.replay import Batch
from shared.model import StochasticMuZeroNet
from shared.search import run_search

SIDE_COLUMN = 9  # position-state column 0: the side held before the decision


@torch.no_grad()
def bootstrap_values(target: StochasticMuZeroNet, batch: Batch) -> Tensor:
    """Value targets [N, K+1] of a tensor batch sampled with bootstrap observations."""
    if batch.bootstrap_obs is None:
        raise ValueError("the batch holds no bootstrap observations; sample it with bootstrap_obs=True")
    N, K1 = batch.reward_sums.shape
    _, _, values = target.initial_inference(batch.bootstrap_obs.flatten(0, 1))  # [N*(K+1)]
    return batch.reward_sums + batch.bootstrap_discounts * values.view(N, K1).to(batch.reward_sums.dtype)


@torch.no_grad()
def reanalyse_policies(
    target: StochasticMuZeroNet,
    batch: Batch,
    fraction: float,
    search: SearchConfig,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, int]:
    """(policy targets [N, K+1, A] with the first ceil(fraction N) rows searched anew,
    roots searched). Steps past the episode end keep their (zero) targets."""
    N, K1, A = batch.target_policies.shape
    rows = math.ceil(fraction * N)
    if rows == 0:
        return batch.target_policies, 0
    obs = torch.cat([batch.obs[:rows, None], batch.next_obs[:rows]], dim=1)  # [rows, K+1, W, F]
    inside = batch.masks[:rows]  # [rows, K+1]
    roots = obs[inside]  # [R, W, F]
    side = roots[:, -1, SIDE_COLUMN].round().long()  # the newest bar's position state
    out = run_search(target, roots, batch.legal_masks[:rows][inside], side, search, generator)
    policies = batch.target_policies.clone()
    fresh = policies[:rows]
    fresh[inside] = out.policy_target.to(policies.dtype)
    return policies, int(roots.shape[0])


def refresh_targets(
    target: StochasticMuZeroNet,
    batch: Batch,
    *,
    bootstrap: bool,
    fraction: float,
    search: SearchConfig,
    generator: torch.Generator | None = None,
) -> tuple[Batch, int]:
    """The batch with fresh value targets (if `bootstrap`) and reanalysed policies; roots searched."""
    target.eval()
    values = bootstrap_values(target, batch) if bootstrap else batch.target_values
    policies, searched = reanalyse_policies(target, batch, fraction, search, generator)
    return replace(batch, target_values=values, target_policies=policies), searched
