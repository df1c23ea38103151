"""Reference search: one environment at a time, node objects and Python floats.

The same algorithm and semantics as :func:`shared.search.search.run_search`, written
the plain way (a per-environment MCTS with batch-1 network calls). It is the baseline
of the batched search's speedup and its cross-check in the tests: with the same
generator state (or no noise) both give the same action, policy target, visit counts
and root value for every environment (up to float rounding; exactly when the model
computes in float64).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from shared.actions import LEGAL_BY_SIDE, NUM_ACTIONS, SIDE_AFTER
from shared.search import selection as sel
from shared.search.search import SearchConfig, SearchModel, SearchOutput, draw_root_noise

_TINY = 2.2250738585072014e-308  # smallest normal float64, as torch.finfo(float64).tiny


class _Decision:
    """A state: its children are chance nodes, one per action taken."""

    __slots__ = ("state", "side", "legal", "logits", "priors", "raw_value", "value", "visits", "reward", "children")

    def __init__(self, state: Tensor, side: int, legal: list[bool], logits: list[float], value: float, reward: float):
        self.state, self.side, self.legal, self.reward = state, side, legal, reward
        self.logits = logits
        self.priors = _softmax(logits, legal)
        self.raw_value = self.value = value
        self.visits = 1
        self.children: dict[int, _Chance] = {}


class _Chance:
    """An afterstate: its children are decision nodes, one per chance code."""

    __slots__ = ("afterstate", "side", "probs", "raw_value", "value", "visits", "children")

    def __init__(self, afterstate: Tensor, side: int, chance_logits: list[float], q: float):
        self.afterstate, self.side = afterstate, side
        self.probs = _softmax(chance_logits, [True] * len(chance_logits))
        self.raw_value = self.value = q
        self.visits = 1
        self.children: dict[int, _Decision] = {}


def _softmax(logits: list[float], legal: list[bool]) -> list[float]:
    top = max(x for x, ok in zip(logits, legal) if ok)
    exps = [math.exp(x - top) if ok else 0.0 for x, ok in zip(logits, legal)]
    total = sum(exps)
    return [e / total for e in exps]


def _argmax(scores: list[float], legal: list[bool]) -> int:
    best, best_score = -1, -math.inf
    for i, (s, ok) in enumerate(zip(scores, legal)):
        if ok and (best < 0 or s > best_score):
            best, best_score = i, s
    return best


def _rescale(values: list[float], lo: float, hi: float) -> list[float]:
    return [(v - lo) / max(hi - lo, sel.NORM_EPSILON) for v in values]


def _children(node: _Decision) -> tuple[list[float], list[float]]:
    visits = [float(node.children[a].visits) if a in node.children else 0.0 for a in range(NUM_ACTIONS)]
    values = [node.children[a].value if a in node.children else 0.0 for a in range(NUM_ACTIONS)]
    return visits, values


def _completed_q(node: _Decision) -> tuple[list[float], list[float]]:
    """(visits, completed Q) of a decision node: Q of visited actions, the mixed value for the others."""
    visits, q = _children(node)
    total = sum(visits)
    probs = [max(p, _TINY) if n > 0 else 0.0 for p, n in zip(node.priors, visits)]
    mass = sum(probs)
    weighted_q = sum(p * v for p, v in zip(probs, q)) / mass if mass > 0 else 0.0
    mixed = (node.raw_value + total * weighted_q) / (total + 1)
    return visits, [v if n > 0 else mixed for v, n in zip(q, visits)]


def _gumbel_sigma(node: _Decision, config: SearchConfig) -> tuple[list[float], list[float]]:
    """(visits, sigma(completed Q)) of a decision node, Q rescaled by the node's own actions."""
    visits, completed = _completed_q(node)
    factor = (max(visits) + config.c_visit) * config.c_scale
    return visits, [factor * x for x in _rescale(completed, min(completed), max(completed))]


def _select_action(node: _Decision, config: SearchConfig, gumbel: list[float], root_considered: float | None) -> int:
    if config.root == "puct":
        visits, q = _children(node)
        pb_c = config.pb_c_init + math.log((node.visits + config.pb_c_base + 1) / config.pb_c_base)
        explore = pb_c * math.sqrt(node.visits)
        seen = [v for v, n in zip(q, visits) if n > 0]
        lo, hi = min([node.value, *seen]), max([node.value, *seen])
        normalised = _rescale([v if n > 0 else lo for v, n in zip(q, visits)], lo, hi)
        scores = [x + explore * p / (n + 1) for x, n, p in zip(normalised, visits, node.priors)]
        return _argmax(scores, node.legal)
    visits, sigma = _gumbel_sigma(node, config)
    if root_considered is None:
        improved = _softmax([x + s for x, s in zip(node.logits, sigma)], node.legal)
        total = sum(visits)
        scores = [p - n / (1 + total) for p, n in zip(improved, visits)]
    else:
        scores = _root_scores(node, gumbel, sigma, visits, root_considered)
    return _argmax(scores, node.legal)


def _root_scores(node: _Decision, gumbel: list[float], sigma: list[float], visits: list[float], considered: float):
    top = max(x for x, ok in zip(node.logits, node.legal) if ok)
    return [
        max(sel.LOW_SCORE, g + (x - top) + s) if n == considered else sel.NOT_CONSIDERED
        for g, x, s, n in zip(gumbel, node.logits, sigma, visits)
    ]


def _select_code(node: _Chance) -> int:
    scores = [p / ((node.children[c].visits if c in node.children else 0) + 1) for c, p in enumerate(node.probs)]
    return _argmax(scores, [True] * len(scores))


@torch.no_grad()
def run_search_single(
    model: SearchModel,
    obs: Tensor,
    legal_mask: Tensor,
    side: Tensor,
    config: SearchConfig | None = None,
    generator: torch.Generator | None = None,
) -> SearchOutput:
    """Same contract as run_search (obs [B, W, 15], legal_mask [B, 4], side [B]), one tree at a time."""
    config = config or SearchConfig()
    device = obs.device
    legal_all = legal_mask.to(device=device, dtype=torch.bool)
    noise = draw_root_noise(config, legal_all, generator, device)
    out_action, out_policy, out_value, out_improved, out_visits = [], [], [], [], []
    dtype = torch.get_default_dtype()
    for i in range(obs.shape[0]):
        state, logits, value = model.initial_inference(obs[i : i + 1])
        dtype = value.dtype
        legal = legal_all[i].tolist()
        root = _Decision(state, int(side[i]), legal, logits[0].to(dtype).tolist(), float(value[0]), 0.0)
        if config.root == "puct" and config.dirichlet_fraction > 0:
            f, noise_row = config.dirichlet_fraction, noise.dirichlet[i].to(dtype).tolist()
            root.priors = [(1 - f) * p + f * d for p, d in zip(root.priors, noise_row)]
        gumbel = noise.gumbel[i].to(dtype).tolist()
        num_considered = min(config.max_considered_actions, sum(legal))
        schedule = sel.considered_visits_sequence(num_considered, config.num_simulations)
        for sim in range(config.num_simulations):
            _simulate(model, root, config, gumbel, schedule[sim])
        action, policy, visits = _summarise(root, config, gumbel, float(noise.uniform[i]))
        out_action.append(action)
        out_policy.append(policy)
        out_value.append(root.value)
        out_improved.append(sum(p * q for p, q in zip(policy, _completed_q(root)[1])))
        out_visits.append(visits)
    return SearchOutput(
        action=torch.tensor(out_action, dtype=torch.long, device=device),
        policy_target=torch.tensor(out_policy, dtype=dtype, device=device).reshape(-1, NUM_ACTIONS),
        root_value=torch.tensor(out_value, dtype=dtype, device=device),
        improved_value=torch.tensor(out_improved, dtype=dtype, device=device),
        visit_counts=torch.tensor(out_visits, dtype=torch.long, device=device).reshape(-1, NUM_ACTIONS),
    )


def _simulate(
    model: SearchModel, root: _Decision, config: SearchConfig, gumbel: list[float], considered: float
) -> None:
    """Select down to an unexpanded edge, expand one node, back its value up."""
    path: list[_Decision | _Chance] = [root]
    node: _Decision | _Chance = root
    while True:
        if isinstance(node, _Decision):
            a = _select_action(node, config, gumbel, considered if node is root else None)
            if a not in node.children:
                action = torch.tensor([a], device=node.state.device)
                afterstate, chance_logits, q = model.afterstate_inference(node.state, action)
                side = int(SIDE_AFTER[node.side + 1, a])
                chance = _Chance(afterstate, side, chance_logits[0].tolist(), float(q[0]))
                node.children[a] = chance
                leaf: _Decision | _Chance = chance
                break
            node = node.children[a]
        else:
            c = _select_code(node)
            if c not in node.children:
                state, reward, logits, value = model.recurrent_inference(
                    node.afterstate, torch.tensor([c], device=node.afterstate.device)
                )
                legal = LEGAL_BY_SIDE[node.side + 1].tolist()
                decision = _Decision(
                    state, node.side, legal, logits[0].to(value.dtype).tolist(), float(value[0]), float(reward[0])
                )
                node.children[c] = decision
                leaf = decision
                break
            node = node.children[c]
        path.append(node)

    ret, child = leaf.raw_value, leaf
    for node in reversed(path):
        if isinstance(child, _Decision):  # a chance edge: reward and one discount
            ret = child.reward + config.discount * ret
        node.value = (node.value * node.visits + ret) / (node.visits + 1)
        node.visits += 1
        child = node


def _summarise(
    root: _Decision, config: SearchConfig, gumbel: list[float], uniform: float
) -> tuple[int, list[float], list[int]]:
    if config.root == "gumbel":
        visits, sigma = _gumbel_sigma(root, config)
        policy = _softmax([x + s for x, s in zip(root.logits, sigma)], root.legal)
        action = _argmax(_root_scores(root, gumbel, sigma, visits, max(visits)), root.legal)
    else:
        visits, _ = _children(root)
        total = sum(visits)
        policy = [n / total for n in visits]
        if config.temperature == 0:
            action = _argmax(visits, root.legal)
        else:
            weights = [n ** (1.0 / config.temperature) if n > 0 else 0.0 for n in visits]
            target, acc, action = uniform * sum(weights), 0.0, NUM_ACTIONS - 1
            for a, w in enumerate(weights):
                acc += w
                if acc > target:
                    action = a
                    break
    return action, policy, [int(n) for n in visits]
