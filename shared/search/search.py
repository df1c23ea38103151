"""Batched Stochastic MuZero search: B trees searched in lock-step with tensor ops.

One simulation (``_simulate``) is:

1. **traverse** all B trees from their roots, one half-step per depth level (decision
   node -> action -> chance node -> code -> decision node ...), until each tree reaches
   an edge with no child yet. A Python loop over depth; no loop over B.
2. **expand** one new node per tree, as node ``k + 1``: trees whose edge leaves a
   decision node get an afterstate (chance node) from ``afterstate_inference``; trees
   whose edge leaves a chance node get a state (decision node) from
   ``recurrent_inference``. One network call per kind, over just that kind's trees
   (index_select in, index_copy out).
3. **back up** the new node's value along the recorded path in one vectorised step:
   every chance edge adds its reward and one discount, action edges add nothing.

One host sync per simulation reads two integers (how many trees expand each kind,
and the deepest leaf, which bounds the next traversal). On the CPU, where a sync is
cheap, the traversal also stops as soon as every walk has ended (one flag per level).

Randomness (Gumbel or Dirichlet noise, pUCT's action sampling) is drawn once, before
the search, as one row per environment: the result for environment i depends only on
its own inputs and on the generator's state and its row position i, never on the other
rows of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from shared.actions import NUM_ACTIONS
from shared.config import SearchConfig
from shared.search import selection as sel
from shared.search.tree import ROOT, Tree, children_stats, floored_softmax, init_tree, mask_logits, rows, side_tables


@runtime_checkable
class SearchModel(Protocol):
    """What the search needs from a model (scalars in pips, actions and codes as indices)."""

    def initial_inference(self, obs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """obs [B, W, 15] -> (state [B, H], policy_logits [B, 4], value [B])."""
        ...

    def afterstate_inference(self, state: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """state [B, H], action [B] long -> (afterstate [B, H], chance_logits [B, C], q [B])."""
        ...

    def recurrent_inference(self, afterstate: Tensor, code: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """afterstate [B, H], code [B] long -> (state [B, H], reward [B], policy_logits [B, 4], value [B])."""
        ...


@dataclass
class SearchOutput:
    """Result per root. ``tree`` is the searched tree, for inspection and tests."""

    action: Tensor  # [B] long, the action to play
    policy_target: Tensor  # [B, 4] float, 0 on illegal actions (improved policy / visit distribution)
    root_value: Tensor  # [B] float, mean of the returns backed up through the root (pips)
    # [B] float, sum_a policy_target(a) * completed Q(a): the value of the improved policy
    # (pips), where root_value is that of the mix of actions the simulations tried.
    improved_value: Tensor
    visit_counts: Tensor  # [B, 4] long
    tree: Tree | None = None


@dataclass
class RootNoise:
    """Pre-drawn randomness, one row per environment, float64 on the search device."""

    gumbel: Tensor  # [B, A] scaled Gumbel(0, 1) (zeros when unused)
    dirichlet: Tensor  # [B, A] Dirichlet sample over the legal actions (zeros when unused)
    uniform: Tensor  # [B] U[0, 1) for pUCT's sampled action


def draw_root_noise(
    config: SearchConfig, legal: Tensor, generator: torch.Generator | None, device: torch.device
) -> RootNoise:
    """legal [B, A] bool -> RootNoise. Row i uses only the generator's draws for row i."""
    B, A = legal.shape
    gen_device = generator.device if generator is not None else device
    f64 = torch.float64
    zeros = torch.zeros((B, A), dtype=f64, device=device)
    gumbel, dirichlet = zeros, zeros
    uniform = torch.zeros(B, dtype=f64, device=device)
    if config.root == "gumbel":
        if config.gumbel_scale > 0:
            u = torch.rand((B, A), generator=generator, device=gen_device, dtype=f64).to(device)
            u = u.clamp(torch.finfo(f64).tiny, 1 - torch.finfo(f64).eps)
            gumbel = -torch.log(-torch.log(u)) * config.gumbel_scale
    else:
        if config.dirichlet_fraction > 0:
            alpha = torch.full((B, A), config.dirichlet_alpha, dtype=f64, device=gen_device)
            gamma = torch._standard_gamma(alpha, generator=generator).to(device) * legal
            total = gamma.sum(-1, keepdim=True)
            uniform_legal = legal.to(f64) / legal.sum(-1, keepdim=True)
            dirichlet = torch.where(total > 0, gamma / total.clamp_min(torch.finfo(f64).tiny), uniform_legal)
        if config.temperature > 0:
            uniform = torch.rand(B, generator=generator, device=gen_device, dtype=f64).to(device)
    return RootNoise(gumbel=gumbel, dirichlet=dirichlet, uniform=uniform)


def root_priors(config: SearchConfig, masked_logits: Tensor, noise: RootNoise) -> Tensor:
    """Root prior [B, A]: softmax of the masked logits, mixed with Dirichlet noise in pUCT mode."""
    priors = floored_softmax(masked_logits)
    if config.root == "puct" and config.dirichlet_fraction > 0:
        f = config.dirichlet_fraction
        priors = (1 - f) * priors + f * noise.dirichlet.to(priors.dtype)
    return priors


def sample_from_visits(visits: Tensor, legal: Tensor, temperature: float, uniform: Tensor) -> Tensor:
    """pUCT acting. visits [B, A], legal [B, A], uniform [B] -> action [B] long.

    temperature 0: most visited legal action. Otherwise sample proportionally to
    visits^(1/T) by inverse CDF with the pre-drawn uniform (never an unvisited action).
    """
    if temperature == 0:
        return sel.masked_argmax(visits, legal)
    weights = torch.where(visits > 0, visits.double() ** (1.0 / temperature), 0.0)
    cdf = weights.cumsum(-1)
    target = uniform.unsqueeze(-1) * cdf[:, -1:]
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp(max=visits.shape[-1] - 1)


# ----------------------------------------------------------------------------- the search


@torch.no_grad()
def run_search(
    model: SearchModel,
    obs: Tensor,
    legal_mask: Tensor,
    side: Tensor,
    config: SearchConfig | None = None,
    generator: torch.Generator | None = None,
) -> SearchOutput:
    """Search B roots at once.

    obs [B, W, 15] float, legal_mask [B, 4] bool (at least one legal action per row),
    side [B] int in {-1, 0, 1} -> SearchOutput. Runs on obs's device (the model's).
    Call ``model.eval()`` first. ``generator`` draws the root noise (None: torch's
    default generator of that device).
    """
    config = config or SearchConfig()
    device = obs.device
    legal = legal_mask.to(device=device, dtype=torch.bool)
    side = side.to(device=device, dtype=torch.long)
    if legal.shape != (obs.shape[0], NUM_ACTIONS) or side.shape != (obs.shape[0],):
        raise ValueError(
            f"legal_mask must be [B, {NUM_ACTIONS}] and side [B]; got {list(legal.shape)}, {list(side.shape)}"
        )
    if not bool(legal.any(-1).all()):
        raise ValueError("every root needs at least one legal action")

    with torch.inference_mode():  # no autograd bookkeeping on the search's many small ops
        tree, noise = _search(model, obs, legal, side, config, generator)
    # Outside inference mode: the outputs are ordinary tensors that callers may write to
    # (the tree's fields stay inference tensors: read-only outside inference mode).
    return _summarise(tree, config, noise)


def _search(
    model: SearchModel,
    obs: Tensor,
    legal: Tensor,
    side: Tensor,
    config: SearchConfig,
    generator: torch.Generator | None,
) -> tuple[Tree, RootNoise]:
    """The searched trees and the root noise they used; arguments as run_search's, checked."""
    state, logits, value = model.initial_inference(obs)
    dtype = value.dtype
    noise = draw_root_noise(config, legal, generator, obs.device)
    masked = mask_logits(logits.to(dtype), legal)
    tree = init_tree(
        config.num_simulations,
        root_state=state,
        root_logits=masked,
        root_value=value,
        root_legal=legal,
        root_side=side,
        root_priors=root_priors(config, masked, noise),
        root_gumbel=noise.gumbel.to(dtype),
        num_chance_codes=config.num_chance_codes,
    )
    ctx = _Context.build(config, tree)
    height = 0  # deepest node, in half-steps from the root (root = 0)
    for sim in range(config.num_simulations):
        height = _simulate(model, tree, ctx, sim, height)
    return tree, noise


@dataclass
class _Context:
    """Constants of one search, built once: index tensors and lookup tables on the device."""

    config: SearchConfig
    row_base: Tensor  # [B] tree * N, so that row_base + node is a flat node id
    legal_by_side: Tensor  # [3, A] bool
    side_after: Tensor  # [3, A] long
    considered: Tensor  # [B, S] Sequential Halving's considered visit per simulation
    halfstep_discount: Tensor  # [S + 2] d_t, discount of the edge into the node at half-step t
    discount_prefix: Tensor  # [S + 2] P_t = d_0 * ... * d_t
    discount_prefix_before: Tensor  # [S + 2] P_{t-1}, 0 for t = 0
    scratch_nodes: Tensor  # [B] long, the scratch node
    stop_early: bool  # end a traversal once every walk has ended (a host sync per level: CPU only)

    @staticmethod
    def build(config: SearchConfig, tree: Tree) -> _Context:
        B, N = tree.batch_size, tree.num_slots
        device, dtype = tree.node_values.device, tree.node_values.dtype
        S = config.num_simulations
        legal_by_side, side_after = side_tables(device)
        table = torch.tensor(sel.considered_visits_table(config.max_considered_actions, S), device=device)
        num_considered = tree.legal[:, ROOT].sum(-1).clamp(max=config.max_considered_actions)
        # A node at an even half-step t >= 2 is a decision node entered through a chance
        # edge, which carries a reward and one discount; action edges carry neither.
        t = torch.arange(S + 2, device=device)
        halfstep_discount = torch.ones(S + 2, dtype=dtype, device=device)
        halfstep_discount[(t % 2 == 0) & (t > 0)] = config.discount
        prefix = halfstep_discount.cumprod(0)
        return _Context(
            config=config,
            row_base=torch.arange(B, device=device) * N,
            legal_by_side=legal_by_side,
            side_after=side_after,
            considered=table[num_considered].to(dtype),
            halfstep_discount=halfstep_discount,
            discount_prefix=prefix,
            discount_prefix_before=torch.cat([prefix.new_zeros(1), prefix[:-1]]),
            scratch_nodes=torch.full((B,), tree.scratch, dtype=torch.long, device=device),
            # On the CPU reading one flag per level costs far less than a level of tree
            # ops; on an accelerator it would stall the queue of kernels.
            stop_early=device.type == "cpu",
        )


def _simulate(model: SearchModel, tree: Tree, ctx: _Context, sim: int, height: int) -> int:
    """One simulation in every tree; creates node sim + 1. Returns the new height."""
    path, edges = _traverse(tree, ctx, sim, height)  # [B, height + 2], [B, height + 1]
    # The leaf's parent is the last real node on the path, at half-step leaf_t.
    leaf_t = (path != tree.scratch).sum(1) - 1  # [B]
    parent = path.gather(1, leaf_t.unsqueeze(1)).squeeze(1)  # [B]
    edge = edges.gather(1, leaf_t.unsqueeze(1)).squeeze(1)  # [B]
    from_chance = leaf_t % 2 == 1  # [B] parent is a chance node
    num_recurrent, deepest = torch.stack([from_chance.sum(), leaf_t.max()]).tolist()  # the one host sync
    node = sim + 1
    _expand(model, tree, ctx, node, parent, edge, from_chance, int(num_recurrent))
    _backup(tree, ctx, path, leaf_t, node)
    return max(height, int(deepest) + 1)


def _traverse(tree: Tree, ctx: _Context, sim: int, height: int) -> tuple[Tensor, Tensor]:
    """Walk every tree from its root to an unexpanded edge.

    Returns path [B, height + 2] (the node at each half-step; scratch after the tree's
    leaf parent, and always in the last column) and edges [B, height + 1] (the action
    or code chosen at each half-step; 0 past the point where every walk had ended). An
    unexpanded edge leads to the scratch node, whose children are scratch too, so a
    finished walk stays there: no per-tree branching. With ``ctx.stop_early`` the walk
    stops as soon as every tree has reached the scratch node (most walks end above the
    deepest node), and the path is padded with the scratch node, as walking on would have.
    """
    node = torch.zeros_like(ctx.row_base)  # [B] all at the root
    nodes, choices = [], []
    for t in range(height + 1):
        flat = None if t == 0 else ctx.row_base + node  # None: the root, read as a slice
        if t % 2 == 0:
            children = _at(tree.action_children, flat)  # [B, A]
            choice = _select_action(tree, ctx, flat, children, sim if t == 0 else None)
        else:
            children = _at(tree.code_children, flat)  # [B, C]
            visits = tree.node_visits.gather(1, children)
            choice = sel.chance_scores(_at(tree.chance_probs, flat), visits).argmax(-1)
        nodes.append(node)
        choices.append(choice)
        node = children.gather(1, choice.unsqueeze(1)).squeeze(1)
        if ctx.stop_early and t < height and bool((node == tree.scratch).all()):
            break
    done = len(choices)
    nodes.extend([ctx.scratch_nodes] * (height + 2 - done))
    choices.extend([torch.zeros_like(ctx.row_base)] * (height + 1 - done))
    return torch.stack(nodes, 1), torch.stack(choices, 1)


def _at(x: Tensor, flat: Tensor | None) -> Tensor:
    """x [B, N, ...] at one node per tree -> [B, ...]: flat ids flat [B], or the root (None, a view)."""
    return x[:, ROOT] if flat is None else rows(x, flat)


def _select_action(tree: Tree, ctx: _Context, flat: Tensor | None, children: Tensor, root_sim: int | None) -> Tensor:
    """Action [B] at the decision nodes flat [B] (flat ids; None: the roots) with children [B, A].

    root_sim, the simulation's index, is set at the root.
    """
    cfg = ctx.config
    visits, q = children_stats(tree, children)
    legal = _at(tree.legal, flat)
    priors = _at(tree.priors, flat)
    if cfg.root == "puct":
        scores = sel.puct_scores(
            priors, q, visits, _at(tree.node_visits, flat), _at(tree.node_values, flat), cfg.pb_c_init, cfg.pb_c_base
        )
        return sel.masked_argmax(scores, legal)
    logits = _at(tree.logits, flat)
    sigma = sel.gumbel_sigma(_at(tree.raw_values, flat), priors, q, visits, cfg.c_visit, cfg.c_scale)
    if root_sim is None:
        scores = sel.gumbel_interior_scores(logits, sigma, visits)
    else:
        scores = sel.gumbel_root_scores(tree.root_gumbel, logits, sigma, visits, ctx.considered[:, root_sim])
    return sel.masked_argmax(scores, legal)


@dataclass(frozen=True)
class _Subset:
    """Some of the B trees: ``index`` [n] long, or None for all B in order (then no gather, no scatter)."""

    index: Tensor | None

    def take(self, x: Tensor) -> Tensor:
        """x [B, ...] -> x at the subset [n, ...]."""
        return x if self.index is None else x.index_select(0, self.index)

    def put(self, dst: Tensor, src: Tensor) -> None:
        """dst [B, ...] at the subset <- src [n, ...]."""
        if self.index is None:
            dst.copy_(src)
        else:
            dst.index_copy_(0, self.index, src)


def _split_by_kind(from_chance: Tensor, num_recurrent: int) -> tuple[_Subset | None, _Subset | None]:
    """from_chance [B] bool with num_recurrent True -> (trees that expand a chance node,
    trees that expand a decision node); None where no tree does. Each subset keeps tree order.
    """
    B = from_chance.shape[0]
    if num_recurrent == 0:
        return _Subset(None), None
    if num_recurrent == B:
        return None, _Subset(None)
    order = torch.argsort(from_chance.to(torch.int8), stable=True)  # afterstate leaves first
    return _Subset(order[: B - num_recurrent]), _Subset(order[B - num_recurrent :])


def _expand(
    model: SearchModel,
    tree: Tree,
    ctx: _Context,
    node: int,
    parent: Tensor,
    edge: Tensor,
    from_chance: Tensor,
    num_recurrent: int,
) -> None:
    """Create node ``node`` in every tree: parent [B], edge [B] (action or code), from_chance [B] bool.

    Trees with from_chance False get a chance node (afterstate_inference on their
    parent's state); the others a decision node (recurrent_inference on the afterstate).
    """
    to_after, to_state = _split_by_kind(from_chance, num_recurrent)
    value = torch.empty(tree.batch_size, dtype=tree.node_values.dtype, device=parent.device)
    parent_flat = ctx.row_base + parent  # [B]
    parent_side = rows(tree.side, parent_flat)  # [B]
    if to_after is not None:
        _expand_chance(model, tree, node, to_after, to_after.take(parent_flat), to_after.take(edge), value)
    if to_state is not None:
        legal = ctx.legal_by_side[to_state.take(parent_side) + 1]  # chance never changes the side
        _expand_decision(model, tree, node, to_state, to_state.take(parent_flat), to_state.take(edge), legal, value)

    action = edge.clamp(max=NUM_ACTIONS - 1)  # codes index nothing here; where() drops them
    tree.side[:, node] = torch.where(from_chance, parent_side, ctx.side_after[parent_side + 1, action])
    tree.is_chance[:, node] = ~from_chance
    tree.parents[:, node] = parent
    tree.edge_from_parent[:, node] = edge
    tree.raw_values[:, node] = value
    tree.node_values[:, node] = value
    tree.node_visits[:, node] = 1


def _expand_chance(
    model: SearchModel, tree: Tree, node: int, subset: _Subset, parent_flat: Tensor, action: Tensor, value: Tensor
) -> None:
    """Chance node ``node`` in the trees of subset [n]: parent_flat [n] (flat ids), action [n]; Q into value [B]."""
    afterstate, chance_logits, q = model.afterstate_inference(rows(tree.embeddings, parent_flat), action)
    if chance_logits.shape[-1] != tree.chance_probs.shape[-1]:
        raise ValueError(
            f"the model has {chance_logits.shape[-1]} chance codes, "
            f"SearchConfig.num_chance_codes is {tree.chance_probs.shape[-1]}"
        )
    subset.put(tree.embeddings[:, node], afterstate.to(tree.embeddings.dtype))
    subset.put(tree.chance_probs[:, node], torch.softmax(chance_logits.to(value.dtype), dim=-1))
    subset.put(value, q.to(value.dtype))
    tree.action_children.view(-1).index_fill_(0, parent_flat * NUM_ACTIONS + action, node)


def _expand_decision(
    model: SearchModel,
    tree: Tree,
    node: int,
    subset: _Subset,
    parent_flat: Tensor,
    code: Tensor,
    legal: Tensor,
    value: Tensor,
) -> None:
    """Decision node ``node`` in the trees of subset [n]: parent_flat [n], code [n], legal [n, A]; value into value [B]."""
    state, reward, logits, v = model.recurrent_inference(rows(tree.embeddings, parent_flat), code)
    masked = mask_logits(logits.to(value.dtype), legal)
    subset.put(tree.embeddings[:, node], state.to(tree.embeddings.dtype))
    subset.put(tree.rewards[:, node], reward.to(value.dtype))
    subset.put(tree.legal[:, node], legal)
    subset.put(tree.logits[:, node], masked)
    subset.put(tree.priors[:, node], floored_softmax(masked))
    subset.put(value, v.to(value.dtype))
    tree.code_children.view(-1).index_fill_(0, parent_flat * tree.code_children.shape[-1] + code, node)


def _backup(tree: Tree, ctx: _Context, path: Tensor, leaf_t: Tensor, node: int) -> None:
    """Back the new node's value up the path, all levels and trees at once.

    path [B, T] (scratch past the leaf's parent), leaf_t [B] the half-step of the leaf's
    parent, node = the new leaf (at half-step leaf_t + 1). The return G_t seen at the
    path node of half-step t obeys G_t = r_{t+1} + d_{t+1} G_{t+1}, where r, d are the
    reward and discount of the edge into half-step t + 1 (a chance edge: its reward and
    the discount; an action edge: 0 and 1), ending with G_{leaf_t} = g = r_leaf + d_leaf
    v_leaf. With P_t = d_0 ... d_t (the same in every tree, d depends on the parity only):
    G_t = (sum_{t < s <= leaf_t} P_{s-1} r_s + P_{leaf_t} g) / P_t.
    """
    real = path != tree.scratch  # [B, T]
    T = path.shape[1]
    weighted = tree.rewards.gather(1, path) * ctx.discount_prefix_before[:T]  # P_{s-1} r_s, 0 off the path
    after = weighted.sum(1, keepdim=True) - weighted.cumsum(1)  # sum over s > t
    leaf_value = tree.raw_values[:, node]
    leaf_return = tree.rewards[:, node] + ctx.halfstep_discount[leaf_t + 1] * leaf_value
    returns = (after + (ctx.discount_prefix[leaf_t] * leaf_return).unsqueeze(1)) / ctx.discount_prefix[:T]

    visits = tree.node_visits.gather(1, path)
    values = tree.node_values.gather(1, path)
    new_values = (values * visits + returns) / (visits + 1) * real  # scratch keeps 0
    tree.node_values.scatter_(1, path, new_values)
    tree.node_visits.scatter_(1, path, visits + real)


def _summarise(tree: Tree, config: SearchConfig, noise: RootNoise) -> SearchOutput:
    """Root action, policy target, value and visit counts from the searched trees."""
    children = tree.action_children[:, ROOT]
    visits, q = children_stats(tree, children)  # [B, A]
    legal = tree.legal[:, ROOT]
    completed = sel.completed_q(tree.raw_values[:, ROOT], tree.priors[:, ROOT], q, visits)  # [B, A]
    if config.root == "gumbel":
        logits = tree.logits[:, ROOT]
        sigma = sel.sigma_of_completed(completed, visits, config.c_visit, config.c_scale)
        policy = torch.softmax(logits + sigma, dim=-1) * legal
        scores = sel.gumbel_root_scores(tree.root_gumbel, logits, sigma, visits, visits.amax(-1))
        action = sel.masked_argmax(scores, legal)
    else:
        policy = visits / visits.sum(-1, keepdim=True)
        action = sample_from_visits(visits, legal, config.temperature, noise.uniform)
    return SearchOutput(
        action=action,
        policy_target=policy,
        root_value=tree.node_values[:, ROOT].clone(),
        improved_value=(policy * completed).sum(-1),
        visit_counts=visits.long(),
        tree=tree,
    )
