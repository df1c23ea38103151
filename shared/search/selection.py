"""Selection rules, as pure tensor functions over any leading batch shape ``[...]``.

Decision nodes (A actions):

* Gumbel root: Sequential Halving with Gumbel (Danihelka et al. 2022; mctx
  ``gumbel_muzero_root_action_selection``).
* Gumbel interior: the deterministic rule argmax(pi' - N / (1 + sum N)), with
  pi' = softmax(logits + sigma(completed Q)) (mctx ``gumbel_muzero_interior_action_selection``).
* pUCT (MuZero Appendix B) at the root and inside.

Chance nodes (C codes): argmax sigma(c) / (N(c) + 1), so visit fractions track sigma.

Q values are normalised per node, by that node's own children (and, for pUCT, its own
value), as mctx does: Gumbel completes unvisited Q with the mixed value and rescales
the completed Q of the node's actions to [0, 1] by their min and max (mctx
``qtransform_completed_by_mix_value``); pUCT normalises by the min and max of the
parent's value and its visited children's Q, unvisited children scoring the minimum
(mctx ``qtransform_by_parent_and_siblings``). A tree-wide min-max (MuZero's
MinMaxStats) lets one far-off node in the tree flatten every other node's differences.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Floor of the Gumbel score and penalty of actions outside Sequential Halving's current
# round (finite, unlike mctx's -inf, so a masked argmax can never land on an illegal action).
LOW_SCORE = -1e9
NOT_CONSIDERED = -1e20
NORM_EPSILON = 1e-8


def masked_argmax(scores: Tensor, legal: Tensor) -> Tensor:
    """scores [..., K], legal [..., K] bool -> index [...] of the best legal entry (first on ties)."""
    return torch.where(legal, scores, -math.inf).argmax(dim=-1)


def rescale(values: Tensor, vmin: Tensor, vmax: Tensor) -> Tensor:
    """values [..., K], vmin/vmax [..., 1] -> (values - vmin) / max(vmax - vmin, eps)."""
    return (values - vmin) / (vmax - vmin).clamp_min(NORM_EPSILON)


def completed_q(raw_value: Tensor, priors: Tensor, q: Tensor, visits: Tensor) -> Tensor:
    """Q of visited actions, the mixed value for the others.

    raw_value [...], priors [..., A] (> 0 where visited), q [..., A] (0 where unvisited),
    visits [..., A] -> [..., A].
    mixed = (v + sum_b N(b) * sum_{visited a} pi(a) q(a) / sum_{visited a} pi(a)) / (1 + sum_b N(b)).
    """
    visited = visits > 0
    weights = priors * visited
    weighted_q = (weights * q).sum(-1) / weights.sum(-1).clamp_min(torch.finfo(priors.dtype).tiny)
    total = visits.sum(-1)
    mixed = (raw_value + total * weighted_q) / (total + 1)
    return torch.where(visited, q, mixed.unsqueeze(-1))


def gumbel_sigma(
    raw_value: Tensor,
    priors: Tensor,
    q: Tensor,
    visits: Tensor,
    c_visit: float,
    c_scale: float,
) -> Tensor:
    """sigma(completed Q) [..., A] of a decision node, the term added to its logits.

    sigma(q) = (c_visit + max_b N(b)) * c_scale * rescaled q, the completed Q rescaled
    to [0, 1] by the min and max over the node's own actions (Gumbel MuZero's monotone
    transform; mctx ``qtransform_completed_by_mix_value`` with ``rescale_values=True``).
    """
    return sigma_of_completed(completed_q(raw_value, priors, q, visits), visits, c_visit, c_scale)


def sigma_of_completed(completed: Tensor, visits: Tensor, c_visit: float, c_scale: float) -> Tensor:
    """:func:`gumbel_sigma` of an already completed Q [..., A]; visits [..., A] -> [..., A]."""
    rescaled = rescale(completed, completed.amin(-1, keepdim=True), completed.amax(-1, keepdim=True))
    return (visits.amax(-1, keepdim=True) + c_visit) * c_scale * rescaled


def gumbel_interior_scores(logits: Tensor, sigma: Tensor, visits: Tensor) -> Tensor:
    """softmax(logits + sigma) - N / (1 + sum N); all [..., A]. Mask before the argmax."""
    improved = torch.softmax(logits + sigma, dim=-1)
    return improved - visits / (1 + visits.sum(-1, keepdim=True))


def gumbel_root_scores(
    gumbel: Tensor, logits: Tensor, sigma: Tensor, visits: Tensor, considered_visit: Tensor
) -> Tensor:
    """Sequential Halving score [..., A]: g + logits + sigma among actions with N == considered_visit [...]."""
    logits = logits - logits.amax(-1, keepdim=True)
    score = (gumbel + logits + sigma).clamp_min(LOW_SCORE)
    return torch.where(visits == considered_visit.unsqueeze(-1), score, NOT_CONSIDERED)


def puct_scores(
    priors: Tensor,
    q: Tensor,
    visits: Tensor,
    parent_visits: Tensor,
    parent_value: Tensor,
    pb_c_init: float,
    pb_c_base: float,
) -> Tensor:
    """MuZero's pUCT [..., A]: normalised Q + P * sqrt(N_parent) * c(N_parent) / (1 + N).

    Q is normalised by the parent's value and its visited children (mctx
    ``qtransform_by_parent_and_siblings``): an unvisited child scores the minimum, 0.
    """
    visited = visits > 0
    parent_value = parent_value.unsqueeze(-1)
    safe = torch.where(visited, q, parent_value)
    vmin = torch.minimum(parent_value, safe.amin(-1, keepdim=True))
    vmax = torch.maximum(parent_value, safe.amax(-1, keepdim=True))
    value = rescale(torch.where(visited, q, vmin), vmin, vmax)
    pb_c = pb_c_init + torch.log((parent_visits + pb_c_base + 1) / pb_c_base)
    explore = (pb_c * parent_visits.sqrt()).unsqueeze(-1) * priors / (visits + 1)
    return value + explore


def chance_scores(probs: Tensor, visits: Tensor) -> Tensor:
    """sigma(c) / (N(c) + 1); [..., C] -> [..., C] (argmax, no mask: every code is possible)."""
    return probs / (visits + 1)


def considered_visits_sequence(max_considered: int, num_simulations: int) -> list[int]:
    """Sequential Halving's schedule: the visit count an action must have to be chosen at each simulation.

    Sequential Halving (Karnin et al. 2013) as laid out by mctx: spend the budget in
    log2(m) rounds, each visiting every remaining action equally, keeping the better half.
    """
    if max_considered <= 1:
        return list(range(num_simulations))
    log2max = math.ceil(math.log2(max_considered))
    sequence: list[int] = []
    visits = [0] * max_considered
    considered = max_considered
    while len(sequence) < num_simulations:
        extra = max(1, int(num_simulations / (log2max * considered)))
        for _ in range(extra):
            sequence.extend(visits[:considered])
            for i in range(considered):
                visits[i] += 1
        considered = max(2, considered // 2)
    return sequence[:num_simulations]


def considered_visits_table(max_considered: int, num_simulations: int) -> list[list[int]]:
    """Row m = the schedule for m considered actions, m = 0..max_considered; [m + 1][S]."""
    return [considered_visits_sequence(m, num_simulations) for m in range(max_considered + 1)]
