"""Fresh targets at sample time: value bootstraps and Reanalyse (Schrittwieser et al.
2021, "Online and offline RL by planning with a learned model"; Ye et al. 2021,
EfficientZero).

Both run the *target network*, a copy of the learner's weights refreshed every
``learning.target_update_interval`` steps, in eval mode and without gradient:

* :func:`bootstrap_values` completes every n-step value target of a batch,
  z = reward_sum + gamma^m v(s_{t+k+m}), on the bootstrap observations the replay
  sampled, with v the value of the improved policy of a fresh noise-free search from
  each (``value_bootstrap="search"``) or the target network's value head ("network").
  Warm-up episodes (no search, no values) and old episodes (values of an old policy)
  get the current network's estimate.
* :func:`hindsight_targets` completes the root's every-action Q targets the same way
  (``learning.hindsight_steps``; ``ReplayBuffer.hindsight_paths``).
* :func:`reanalyse_policies` replaces the policy targets of the first ``fraction`` of
  the batch's positions (the batch is an i.i.d. draw, so its first rows are a random
  subset) by the improved policy of a new batched search from each of their unroll
  steps inside the episode: one :func:`run_search` call over all those roots.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import get_args

import torch
from torch import Tensor

from shared.config import SearchConfig, ValueBootstrap
from shared.learning.replay import Batch
from shared.model import StochasticMuZeroNet
from shared.search import run_search
from shared.search.tree import side_tables

SIDE_COLUMN = 9  # position-state column 0: the side held before the decision


@torch.no_grad()
def bootstrap_values(target: StochasticMuZeroNet, batch: Batch, search: SearchConfig | None = None) -> Tensor:
    """Value targets [N, K+1] of a tensor batch sampled with bootstrap observations.

    `search` None: v is the target network's value head. Otherwise v is the value of the
    improved policy of a fresh noise-free search from each bootstrap state."""
    if batch.bootstrap_obs is None:
        raise ValueError("the batch holds no bootstrap observations; sample it with bootstrap_obs=True")
    N, K1 = batch.reward_sums.shape
    obs = batch.bootstrap_obs.flatten(0, 1)  # [N*(K+1), W, F]
    if search is None:
        _, _, values = target.initial_inference(obs)  # [N*(K+1)]
    else:  # every row, also those past the episode end (discount 0): a fixed batch shape
        values = improved_values(target, obs, search)
    return batch.reward_sums + batch.bootstrap_discounts * values.view(N, K1).to(batch.reward_sums.dtype)


@torch.no_grad()
def improved_values(target: StochasticMuZeroNet, obs: Tensor, search: SearchConfig) -> Tensor:
    """obs [M, W, F] -> [M]: the value of the improved policy of a noise-free search from each."""
    side = obs[:, -1, SIDE_COLUMN].round().long()
    legal = side_tables(obs.device)[0][side + 1]  # legal_by_side [3, A], row side + 1
    quiet = search.model_copy(update={"gumbel_scale": 0.0, "dirichlet_fraction": 0.0, "temperature": 0.0})
    return run_search(target, obs, legal, side, quiet).improved_value


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
    bootstrap: ValueBootstrap,
    fraction: float,
    search: SearchConfig,
    generator: torch.Generator | None = None,
) -> tuple[Batch, int]:
    """(the batch with fresh value targets and reanalysed policies, roots searched).

    `bootstrap` is ``learning.value_bootstrap``: "stored" keeps the replay's targets,
    "network" bootstraps from the target network's value, "search" from the improved
    policy's value of a fresh search (one root per value target).
    Anything else is refused."""
    if bootstrap not in get_args(ValueBootstrap):
        raise ValueError(f"bootstrap must be one of {', '.join(get_args(ValueBootstrap))}; got {bootstrap!r}")
    target.eval()
    searched = 0
    values = batch.target_values
    if bootstrap != "stored":
        values = bootstrap_values(target, batch, search if bootstrap == "search" else None)
    if bootstrap == "search":
        searched += values.numel()
    policies, reanalysed = reanalyse_policies(target, batch, fraction, search, generator)
    batch = replace(batch, target_values=values, target_policies=policies)
    if batch.hindsight_obs is not None:
        batch = hindsight_targets(target, batch)
    return batch, searched + reanalysed


@torch.no_grad()
def hindsight_targets(target: StochasticMuZeroNet, batch: Batch) -> Batch:
    """The batch with ``hindsight_targets`` [N, A] = sums + gamma^m v(state after the path).

    v is the target network's value head, whatever ``value_bootstrap`` says: a search
    from each path's end would add ~3 searched roots per position, ~1.5x the searches
    of a batch. Only paths with a bootstrap (discount > 0: legal, and not cut as a
    terminal) are evaluated; illegal actions are masked in the loss."""
    sums, discounts, paths_obs = batch.hindsight_sums, batch.hindsight_discounts, batch.hindsight_obs
    if sums is None or discounts is None or paths_obs is None:
        raise ValueError("the batch holds no hindsight paths; sample it with hindsight=True")
    bootstrapped = discounts > 0  # [N, A]
    values = torch.zeros_like(sums)
    obs = paths_obs[bootstrapped]  # [M, W, F]
    if obs.shape[0]:
        values[bootstrapped] = target.initial_inference(obs)[2].to(values.dtype)
    return replace(batch, hindsight_targets=sums + discounts * values)
