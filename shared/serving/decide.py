"""One batched greedy search over many observations -> one :class:`Decision` each.

This is the only place a served model turns observations into decisions: the API's
inference thread and :meth:`shared.agent.Agent.act` both call :func:`decide`. With no
root noise each root's result depends only on its own inputs, so a decision does not
depend on what else shares its batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from shared.actions import NUM_ACTIONS, Action
from shared.search import run_search
from shared.serving.model import CheckpointInfo, ServedModel
from shared.serving.observation import Observation

ACTION_NAMES: tuple[str, ...] = tuple(a.name for a in Action)  # HOLD, BUY, SELL, CLOSE


@dataclass(frozen=True)
class Decision:
    """The greedy search's answer for one state.

    ``policy``: the search's improved policy as float64, 0 on illegal actions,
    renormalised to sum to 1 over the legal ones (index = :class:`Action`);
    ``value``: the root value in pips; ``checkpoint``: the checkpoint that answered.
    """

    action: Action
    policy: np.ndarray  # [4] float64
    value: float
    legal: np.ndarray  # [4] bool
    checkpoint: CheckpointInfo

    @property
    def policy_by_name(self) -> dict[str, float]:
        return {name: float(self.policy[i]) for i, name in enumerate(ACTION_NAMES)}

    @property
    def legal_actions(self) -> list[Action]:
        return [Action(i) for i in range(NUM_ACTIONS) if self.legal[i]]


def decide(served: ServedModel, observations: Sequence[Observation]) -> list[Decision]:
    """One greedy search of `served` over every observation (B = len(observations))."""
    if not observations:
        return []
    device = served.device
    with torch.no_grad():
        obs = torch.from_numpy(np.stack([o.obs for o in observations])).to(device)
        legal = torch.from_numpy(np.stack([o.legal for o in observations])).to(device)
        side = torch.tensor([o.side for o in observations], dtype=torch.long, device=device)
        out = run_search(served.model, obs, legal, side, served.search)
        actions = out.action.cpu().numpy()
        policy = out.policy_target.double().cpu().numpy()
        values = out.root_value.double().cpu().numpy()
    info = served.info
    decisions = []
    for i, o in enumerate(observations):
        p = np.where(o.legal, policy[i], 0.0)
        total = p.sum()
        decisions.append(
            Decision(
                action=Action(int(actions[i])),
                policy=p / total if total > 0 else p,
                value=float(values[i]),
                legal=o.legal,
                checkpoint=info,
            )
        )
    return decisions
