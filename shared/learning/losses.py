"""The Stochastic MuZero loss over one unrolled batch (Antonoglou et al. 2022, eq. 7).

For a position t unrolled K steps (s^0 = represent(o_t)), at each step k:

    policy      CE(pi_{t+k}, p^k)          illegal actions removed from the logits
    value       CE(two-hot z_{t+k}, v^k)
and for k < K, with as^k = afterstate(s^k, a_{t+k}) and (c, c^e) = encoder(o_{t+k+1}):
    Q           CE(two-hot z_{t+k}, Q^k)   the paper trains Q to the same n-step target
    sigma       CE(c, sigma^k)             c is the encoder's one-hot, detached
    commitment  ||c - c^e||^2              c^e the encoder's softmax (VQ-VAE style)
    reward      CE(two-hot r_{t+k}, r^k)   s^{k+1}, r^k = dynamics(as^k, c), c straight-through
    consistency 1 - cos(s^{k+1}, h(o_{t+k+1}))   the state the dynamics reach against the one the
                                           representation gives the real next window, the latter
                                           without gradient (EfficientZero's temporal consistency,
                                           Ye et al. 2021, with no projection heads)
and at k = 0, with ``learning.hindsight_steps`` (the batch then holds hindsight targets):
    hindsight   mean over legal a of CE(two-hot z^a_t, Q(afterstate(s^0, a)))   z^a_t: take a,
                                           then hold, then bootstrap (ReplayBuffer.hindsight_paths)
and once per batch:
    diversity   1 - H(mean c) / log C      codebook diversity of the straight-through codes: 0
                                           when the batch uses every code equally, 1 when one

Every term is masked to steps inside the episode: the episode end is a time limit, so
there is no "absorbing state" to train towards 0 past it. Weights: predictions of the
initial state (policy/value at k=0) and the Q of the first afterstate count 1 (Q drives
the search at first visits, so it is weighted like the value), every other prediction
of the recurrent functions counts 1/K, and the gradient entering each new state is
scaled by ``state_gradient_scale`` (MuZero's ``scale_gradient(s, 0.5)``). The
per-sample total is multiplied by the replay's importance weight and averaged over the
batch. New priorities are |v^0 - z_t|.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from shared.config import LearningConfig
from shared.learning.replay import Batch
from shared.model import StochasticMuZeroNet

COMPONENTS = ("policy", "value", "q", "sigma", "commitment", "reward", "consistency", "hindsight")  # per sample


@dataclass(frozen=True)
class LossOutput:
    loss: Tensor  # scalar: importance-weighted total, to backpropagate
    metrics: dict[str, float]  # "loss", "<component>_loss" (unweighted batch means), code usage
    priorities: np.ndarray  # [N] float64: |v^0 - z_t|, new replay priorities
    code_histogram: np.ndarray  # [codes] int64: encoder argmax codes over in-episode steps


def scale_gradient(x: Tensor, scale: float) -> Tensor:
    """Identity forward; the backward gradient is multiplied by `scale`."""
    return x * scale + x.detach() * (1 - scale)


def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """logits [N, M], target probs [N, M] -> [N]."""
    return -(target * F.log_softmax(logits, dim=-1)).sum(-1)


def code_perplexity(histogram: np.ndarray) -> float:
    """exp(entropy) of the code usage: 1 = one code for everything, `codes` = uniform use."""
    total = histogram.sum()
    if total == 0:
        return 0.0
    p = histogram[histogram > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def code_diversity_loss(codes: Tensor, mask: Tensor) -> Tensor:
    """1 - H(code usage) / log C over the real transitions' straight-through codes.

    The forward value is the entropy of the batch's argmax-code histogram (what the
    dynamics really receive); the gradient reaches the encoder's softmax through the
    straight-through estimator. Spreading the *softmax* average instead (wav2vec 2.0)
    is met by every transition being unsure while the argmax stays on one code.
    codes [N, K, C] (one-hot forward), mask [N, K] bool -> scalar; 0 with one code.
    """
    C = codes.shape[-1]
    if C == 1 or not bool(mask.any()):
        return codes.new_zeros(())
    usage = codes[mask].mean(0)  # [C], sums to 1
    entropy = -(usage * torch.log(usage.clamp_min(1e-6))).sum()
    return 1 - entropy / math.log(C)


def hindsight_loss(model: StochasticMuZeroNet, state: Tensor, targets: Tensor, legal: Tensor) -> Tensor:
    """state [N, H] (s^0), targets [N, A] (hindsight targets), legal [N, A] bool -> [N]:
    mean over the legal actions a of CE(two-hot target of a, Q(afterstate(s^0, a)))."""
    N, A = targets.shape
    actions = torch.arange(A, device=state.device).repeat(N)  # [N*A]: 0..A-1 per position
    q_logits = model.afterstate_predict(model.afterstate(state.repeat_interleave(A, 0), actions))[1]  # [N*A, bins]
    ce = soft_cross_entropy(q_logits, model.to_support(targets.flatten())).view(N, A)
    weights = legal.float()  # at least Hold is legal
    return (ce * weights).sum(-1) / weights.sum(-1)


def stochastic_muzero_loss(model: StochasticMuZeroNet, batch: Batch, config: LearningConfig) -> LossOutput:
    """`batch` holds tensors on the model's device (``Batch.to``)."""
    N, K = batch.actions.shape
    masks = batch.masks.float()  # [N, K+1]
    codes, code_probs = model.encode_chance(batch.next_obs.flatten(0, 1))  # [N*K, C] each
    codes, code_probs = codes.view(N, K, -1), code_probs.view(N, K, -1)  # [N, K, C]
    onehot = codes.detach()  # forward value of the straight-through code: exactly one-hot

    parts = {name: torch.zeros(N, device=batch.obs.device) for name in COMPONENTS}  # each [N]
    state = model.represent(batch.obs)  # [N, H]
    if config.consistency_weight > 0:  # what the dynamics should reach: h(o_{t+k+1}), no gradient
        with torch.no_grad():
            next_states = model.represent(batch.next_obs.flatten(0, 1)).view(N, K, -1)  # [N, K, H]
    for k in range(K + 1):
        scale = 1.0 if k == 0 else 1.0 / K
        policy_logits, value_logits = model.predict(state)  # [N, A], [N, bins]
        if k == 0:
            value0 = model.to_scalar(value_logits.detach())  # [N]
            if batch.hindsight_targets is not None:
                parts["hindsight"] += hindsight_loss(model, state, batch.hindsight_targets, batch.legal_masks[:, 0])
        policy_logits = policy_logits.masked_fill(~batch.legal_masks[:, k], -1e9)
        parts["policy"] += scale * masks[:, k] * soft_cross_entropy(policy_logits, batch.target_policies[:, k])
        value_target = model.to_support(batch.target_values[:, k])  # [N, bins]
        parts["value"] += scale * masks[:, k] * soft_cross_entropy(value_logits, value_target)
        if k == K:
            break
        afterstate = model.afterstate(state, batch.actions[:, k])  # [N, H]
        sigma_logits, q_logits = model.afterstate_predict(afterstate)  # [N, C], [N, bins]
        parts["q"] += scale * masks[:, k] * soft_cross_entropy(q_logits, value_target)
        parts["sigma"] += masks[:, k] * soft_cross_entropy(sigma_logits, onehot[:, k]) / K
        parts["commitment"] += masks[:, k] * ((onehot[:, k] - code_probs[:, k]) ** 2).sum(-1) / K
        state, reward_logits = model.dynamics(afterstate, codes[:, k])  # [N, H], [N, bins]
        reward_target = model.to_support(batch.target_rewards[:, k])
        parts["reward"] += masks[:, k] * soft_cross_entropy(reward_logits, reward_target) / K
        if config.consistency_weight > 0:
            similarity = F.cosine_similarity(state, next_states[:, k], dim=-1)  # [N]
            parts["consistency"] += masks[:, k] * (1 - similarity) / K
        state = scale_gradient(state, config.state_gradient_scale)

    weights = {name: getattr(config, f"{name}_weight") for name in COMPONENTS}
    per_sample = sum(weights[name] * parts[name] for name in COMPONENTS)  # [N]
    diversity = code_diversity_loss(codes, batch.masks[:, :K])
    loss = (batch.weights * per_sample).mean() + config.code_diversity_weight * diversity

    used = codes.detach().argmax(-1)[batch.masks[:, :K]]  # codes of real transitions
    histogram = torch.bincount(used, minlength=codes.shape[-1]).cpu().numpy()
    metrics = {"loss": float(loss.detach())}
    metrics.update({f"{name}_loss": float(parts[name].detach().mean()) for name in COMPONENTS})
    metrics["diversity_loss"] = float(diversity.detach())
    metrics["value_prediction"] = float(value0.mean())
    metrics["code_perplexity"] = code_perplexity(histogram)
    metrics["codes_used"] = float((histogram > 0).sum())
    priorities = (value0 - batch.target_values[:, 0]).abs().double().cpu().numpy()
    return LossOutput(loss=loss, metrics=metrics, priorities=priorities, code_histogram=histogram)
