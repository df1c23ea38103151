"""The batched search tree: B Stochastic MuZero trees as one struct of tensors (as in mctx).

Shapes (B trees, S simulations, N = S + 2 node slots, A = 4 actions, C chance codes,
H hidden size):

* Node ``0`` is the root (a decision node). Simulation ``k`` (0-based) creates node
  ``k + 1`` in every tree, so node index = simulation index + 1 and no allocator is
  needed. Node ``S + 1`` is the *scratch* node, a node that never exists: every
  unexpanded edge points at it, finished traversals park on it, and masked writes land
  on it. It keeps zero visits, zero value and no children, so reading the stats of an
  unexpanded child needs no mask.
* Two node kinds share the index space. A **decision node** holds a state; its
  children, one per action, are chance nodes. A **chance node** holds an afterstate
  (state + action, before the market moves); its children, one per chance code, are
  decision nodes. Kinds strictly alternate along a path, so the kind of a node is the
  parity of its depth (root depth 0 = decision); ``is_chance`` records it for readers.
* ``node_values`` are running means of the returns backed up through the node,
  initialised with ``raw_values`` (the network's value for a decision node, its Q for a
  chance node) at one visit, as in mctx. The Q of action ``a`` at a decision node is
  the value of its chance child (the reward arrives on the chance edge).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from shared.actions import LEGAL_BY_SIDE, SIDE_AFTER

ROOT = 0


@dataclass
class Tree:
    """B trees in preallocated tensors; see the module docstring for the layout."""

    embeddings: Tensor  # [B, N, H]  state (decision) or afterstate (chance)
    node_visits: Tensor  # [B, N]     float, visits incl. the expansion visit
    node_values: Tensor  # [B, N]     running mean of backed-up returns (pips)
    raw_values: Tensor  # [B, N]     network value (decision) / Q (chance)
    rewards: Tensor  # [B, N]     reward on the chance edge into a decision node; 0 otherwise
    parents: Tensor  # [B, N]     long, -1 for the root and unused slots
    edge_from_parent: Tensor  # [B, N]     long, the action or code leading here; -1 for the root
    is_chance: Tensor  # [B, N]     bool
    side: Tensor  # [B, N]     long, side held (decision) / side after the action (chance)
    legal: Tensor  # [B, N, A]  bool, legal actions of decision nodes
    logits: Tensor  # [B, N, A]  policy logits of decision nodes, illegal ones at finfo.min
    priors: Tensor  # [B, N, A]  softmax(logits) floored at finfo.tiny; at a pUCT root with Dirichlet noise
    chance_probs: Tensor  # [B, N, C]  sigma = softmax(chance_logits) of chance nodes
    action_children: Tensor  # [B, N, A]  long, chance-node index, scratch if not expanded
    code_children: Tensor  # [B, N, C]  long, decision-node index, scratch if not expanded
    root_gumbel: Tensor  # [B, A]     Gumbel noise of the root (zeros in pUCT mode)

    @property
    def batch_size(self) -> int:
        return self.node_values.shape[0]

    @property
    def num_slots(self) -> int:
        """N = S + 2 (root, S expanded nodes, scratch)."""
        return self.node_values.shape[1]

    @property
    def scratch(self) -> int:
        return self.num_slots - 1


def side_tables(device: torch.device) -> tuple[Tensor, Tensor]:
    """(legal_by_side [3, A] bool, side_after [3, A] long) from shared.actions, on device."""
    legal = torch.as_tensor(LEGAL_BY_SIDE, dtype=torch.bool, device=device)
    after = torch.as_tensor(SIDE_AFTER, dtype=torch.long, device=device)
    return legal, after


def mask_logits(logits: Tensor, legal: Tensor) -> Tensor:
    """Illegal logits set to finfo.min (finite, so softmax gives them exactly 0, no NaN)."""
    return logits.masked_fill(~legal, torch.finfo(logits.dtype).min)


def floored_softmax(logits: Tensor) -> Tensor:
    """softmax over the last dim, floored at finfo.tiny (so a visited action never has prior 0)."""
    return torch.softmax(logits, dim=-1).clamp_min(torch.finfo(logits.dtype).tiny)


def init_tree(
    num_simulations: int,
    root_state: Tensor,
    root_logits: Tensor,
    root_value: Tensor,
    root_legal: Tensor,
    root_side: Tensor,
    root_priors: Tensor,
    root_gumbel: Tensor,
    num_chance_codes: int,
) -> Tree:
    """Allocate B trees of S + 2 slots and fill the root.

    root_state [B, H], root_logits [B, A] (masked), root_value [B], root_legal [B, A]
    bool, root_side [B] long, root_priors [B, A], root_gumbel [B, A] -> Tree.
    """
    B, H = root_state.shape
    A = root_logits.shape[1]
    N = num_simulations + 2
    C = num_chance_codes
    dev, dt = root_state.device, root_value.dtype

    def zeros(*shape: int, dtype: torch.dtype = dt) -> Tensor:
        return torch.zeros(shape, dtype=dtype, device=dev)

    def full(shape: tuple[int, ...], value: float, dtype: torch.dtype) -> Tensor:
        return torch.full(shape, value, dtype=dtype, device=dev)

    tree = Tree(
        embeddings=torch.zeros((B, N, H), dtype=root_state.dtype, device=dev),
        node_visits=zeros(B, N),
        node_values=zeros(B, N),
        raw_values=zeros(B, N),
        rewards=zeros(B, N),
        parents=full((B, N), -1, torch.long),
        edge_from_parent=full((B, N), -1, torch.long),
        is_chance=zeros(B, N, dtype=torch.bool),
        side=zeros(B, N, dtype=torch.long),
        legal=full((B, N, A), True, torch.bool),
        logits=zeros(B, N, A),
        priors=full((B, N, A), 1.0 / A, dt),
        chance_probs=full((B, N, C), 1.0 / C, dt),
        action_children=full((B, N, A), N - 1, torch.long),
        code_children=full((B, N, C), N - 1, torch.long),
        root_gumbel=root_gumbel,
    )
    tree.embeddings[:, ROOT] = root_state
    tree.node_visits[:, ROOT] = 1
    tree.node_values[:, ROOT] = root_value
    tree.raw_values[:, ROOT] = root_value
    tree.side[:, ROOT] = root_side
    tree.legal[:, ROOT] = root_legal
    tree.logits[:, ROOT] = root_logits
    tree.priors[:, ROOT] = root_priors
    return tree


def rows(x: Tensor, flat: Tensor) -> Tensor:
    """x [B, N, ...] at flat node ids flat [n] (= tree * N + node) -> [n, ...].

    One index_select on the flattened view: cheaper than x[batch, node] advanced indexing.
    """
    return x.flatten(0, 1).index_select(0, flat)


def children_stats(tree: Tree, children: Tensor) -> tuple[Tensor, Tensor]:
    """Visits and values of the children of one node per tree.

    children [B, K] long (a row of action_children or code_children) -> (visits [B, K]
    float, values [B, K]); an unexpanded child is the scratch node: 0 visits, value 0.
    """
    return tree.node_visits.gather(1, children), tree.node_values.gather(1, children)
