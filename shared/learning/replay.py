"""Prioritised replay over positions, storing no observations (ARCHITECTURE §1, §6).

Storage is a ring of ``capacity`` position rows. Position number ``serial`` (counting
every position ever inserted) lives in row ``serial % capacity``; an episode occupies
consecutive serials, so its rows are contiguous modulo the capacity, and evicting the
oldest whole episodes first frees exactly the rows the next episode needs. A row holds
the position state *before* that decision, the action, reward, search root value,
n-step reward sum and bootstrap offset (``targets.n_step_returns``), policy target and
legal mask. Value targets are completed at sample time: the learner bootstraps them
from a recent network on ``Batch.bootstrap_obs`` (the default), or they use the stored
root values (``Batch.target_values``). The state after an episode's last step is flat (the environment
force-closes), so it needs no row: it is rebuilt as zeros.

Insert replays the episode's actions with :func:`replay_positions`, the environment's
step arithmetic applied to all T steps at once (a Python loop over ``VecTradingEnv.step``
cost ~23 ms per 360-step episode and bounded the trainer's intake).
``tests/test_replay_insert.py`` holds it bit for bit to the environment.

Observations are rebuilt at sample time: for decision step j of an episode starting at
feature row s, window bar i (0 = oldest) is feature row ``s + j - W + 1 + i`` with the
position state of episode step ``j - W + 1 + i`` (zeros before the episode began and
at/after its end) -- exactly what ``VecTradingEnv.observe()`` returned at that step.

With ``learning.hindsight_steps`` a batch also holds, for each sampled position and each
legal action, the path "that action, then Hold" replayed the same way from the stored
bars (``hindsight_paths``, all of a batch's paths in one :func:`replay_paths` call): the
market does not answer the agent's orders, so what the other actions would have earned
is known.

Sample indices are position serials, so ``update_priorities`` can ignore positions
evicted since they were sampled.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, fields, replace
from typing import Any, TypeAlias

import numpy as np
import torch

from shared.actions import LEGAL_BY_SIDE, NUM_ACTIONS, Action, legal_mask
from shared.config import LearningConfig
from shared.env import NUM_POSITION_FEATURES
from shared.env.vector import POSITION_SCALE
from shared.episode import Episode
from shared.learning.targets import n_step_returns, n_step_targets
from shared.market import MarketData

REWARD_ATOL = 1e-3  # pips: replayed rewards must match the message's to this


# A batch field: numpy as the replay samples it, a torch tensor after ``Batch.to``.
Array: TypeAlias = Any


@dataclass(frozen=True)
class Batch:
    """N sampled positions t, unrolled K steps. numpy arrays, or tensors after ``to()``."""

    obs: Array  # [N, W, F] float32: observation at t
    next_obs: Array  # [N, K, W, F] float32: observations at t+1..t+K (clamped to the episode end)
    actions: Array  # [N, K] int64: a_{t+k}; uniform random past the end
    target_values: Array  # [N, K+1] float32: z_{t+k} bootstrapped from stored root values; 0 at/after the end
    reward_sums: Array  # [N, K+1] float32: discounted rewards of z_{t+k} before its bootstrap; 0 at/after the end
    bootstrap_discounts: Array  # [N, K+1] float32: gamma^m of z_{t+k}'s bootstrap; 0 at/after the end
    target_rewards: Array  # [N, K] float32: r_{t+k}; 0 past the end
    target_policies: Array  # [N, K+1, A] float32: improved policy; 0 at/after the end
    legal_masks: Array  # [N, K+1, A] bool; all True at/after the end
    masks: Array  # [N, K+1] bool: step t+k is a decision inside the episode
    weights: Array  # [N] float32: importance weights, max 1
    indices: Array  # [N] int64: position serials, for update_priorities
    # [N, K+1, W, F] float32: observation at each target's bootstrap step t+k+m (None
    # unless sampled with bootstrap_obs=True).
    bootstrap_obs: Array | None = None
    # Hindsight targets of the root's every legal action a (``learning.hindsight_steps`` n > 0,
    # else None): "a, then Hold" for m = min(n, T - t) bars (``ReplayBuffer.hindsight_paths``).
    hindsight_sums: Array | None = None  # [N, A] float32: discounted rewards of those m bars
    hindsight_discounts: Array | None = None  # [N, A] float32: gamma^m; 0 for illegal actions
    hindsight_obs: Array | None = None  # [N, A, W, F] float32: observation after them (zeros if illegal)
    hindsight_targets: Array | None = None  # [N, A] float32: sums + discounts v(obs), set by the learner

    def to(self, device: torch.device | str) -> Batch:
        """The same batch as torch tensors on `device`."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{k: None if v is None else torch.as_tensor(v, device=device) for k, v in moved.items()})


class ReplayBuffer:
    def __init__(
        self,
        market: MarketData,
        config: LearningConfig,
        window: int,
        drawdown_penalty: float,
        seed: int | None = None,
    ) -> None:
        C = config.replay_capacity
        self.market, self.config, self.window, self.drawdown_penalty = market, config, window, drawdown_penalty
        self.rng = np.random.default_rng(seed)
        self.states = np.zeros((C, NUM_POSITION_FEATURES), np.float32)  # before the decision
        self.actions = np.zeros(C, np.uint8)
        self.rewards = np.zeros(C, np.float32)
        self.root_values = np.zeros(C, np.float32)  # search value at the decision
        self.reward_sums = np.zeros(C, np.float32)  # n-step discounted reward sums
        self.offsets = np.zeros(C, np.int64)  # m: the bootstrap state is t + m
        self.policies = np.zeros((C, NUM_ACTIONS), np.float32)
        self.legal = np.zeros((C, NUM_ACTIONS), bool)
        self.serial = np.zeros(C, np.int64)
        self.step = np.zeros(C, np.int64)  # t within the episode
        self.length = np.zeros(C, np.int64)  # T of the episode
        self.start = np.zeros(C, np.int64)  # feature row of the episode's first decision
        self.opened = np.zeros(C, np.int64)  # step that opened the trade held before decision t; t when flat
        self.priorities = np.zeros(C, np.float64)  # 0 = empty row
        self._p_alpha = np.zeros(C, np.float64)  # priorities ** alpha
        self._episodes: deque[tuple[int, int]] = deque()  # (first serial, length), oldest first
        self._head = 0  # serial of the next position = positions ever inserted
        self._tail = 0  # serial of the oldest live position
        self.max_priority = 1.0
        self.sampled = 0  # positions handed out by sample()

    # ------------------------------------------------------------------ bookkeeping
    def __len__(self) -> int:
        return self._head - self._tail

    @property
    def inserted(self) -> int:
        return self._head

    @property
    def num_episodes(self) -> int:
        return len(self._episodes)

    # ------------------------------------------------------------------ insert
    def insert(self, episode: Episode) -> np.ndarray:
        """Store `episode`; returns the serials of its positions [T]."""
        C, T, cfg = self.config.replay_capacity, len(episode), self.config
        name = f"episode run_id={episode.run_id!r} start_bar={episode.start_bar}"
        if episode.symbol.upper() != self.market.symbol.upper():
            raise ValueError(f"{name} is for {episode.symbol}, this replay holds {self.market.symbol}")
        if T > C:
            raise ValueError(f"{name} has {T} positions, more than the replay capacity {C}")
        try:
            states, rewards = replay_positions(
                self.market, episode.start_bar, episode.actions, self.window, self.drawdown_penalty
            )
        except ValueError as exc:
            raise ValueError(f"{name} cannot be replayed: {exc}") from exc
        bad = np.flatnonzero(np.abs(rewards - episode.rewards) > REWARD_ATOL)
        if bad.size:
            k = int(bad[0])
            raise ValueError(
                f"{name}: replayed reward {rewards[k]:.6f} differs from the message's {episode.rewards[k]:.6f} "
                f"at step {k} ({bad.size} steps differ) -- the episode was built on other data "
                f"(prices, spread, window or drawdown penalty)"
            )
        legal = legal_mask(states[:, 0].astype(np.int64))  # [T, A]
        if not np.array_equal(legal, episode.legal_masks):
            raise ValueError(f"{name}: legal masks disagree with the replayed positions")
        moved = np.maximum.accumulate(np.where(episode.actions != Action.HOLD, np.arange(T), -1))  # [T]
        opened = np.where(states[:, 0] != 0, np.concatenate([[0], moved[:-1]]), np.arange(T))  # [T]

        policy = np.where(legal, episode.policy_targets, 0.0)  # no target mass on illegal actions
        total = policy.sum(-1, keepdims=True)
        policy = np.where(total > 0, policy / np.where(total > 0, total, 1), legal / legal.sum(-1, keepdims=True))
        sums, offsets = n_step_returns(rewards, cfg.td_steps, cfg.discount)  # [T] each
        if cfg.initial_priority == "td":
            z = n_step_targets(rewards, episode.root_values, cfg.td_steps, cfg.discount, float(episode.root_values[-1]))
            priority = np.maximum(np.abs(episode.root_values - z), cfg.priority_epsilon)
        else:
            priority = np.full(T, self.max_priority)

        while len(self) + T > C:  # evict the oldest whole episodes
            first, length = self._episodes.popleft()
            old = np.arange(first, first + length) % C
            self.priorities[old] = 0.0
            self._p_alpha[old] = 0.0
            self._tail = first + length
        serials = np.arange(self._head, self._head + T)
        rows = serials % C
        self.states[rows] = states
        self.actions[rows] = episode.actions
        self.rewards[rows] = rewards
        self.root_values[rows] = episode.root_values
        self.reward_sums[rows] = sums
        self.offsets[rows] = offsets
        self.policies[rows] = policy
        self.legal[rows] = legal
        self.serial[rows] = serials
        self.step[rows] = np.arange(T)
        self.length[rows] = T
        self.start[rows] = episode.start_bar
        self.opened[rows] = opened
        self.priorities[rows] = priority
        self._p_alpha[rows] = priority**cfg.priority_alpha
        self.max_priority = max(self.max_priority, float(priority.max()))
        self._episodes.append((self._head, T))
        self._head += T
        return serials

    # ------------------------------------------------------------------ observations
    def _observations(self, first: np.ndarray, length: np.ndarray, start: np.ndarray, tau: np.ndarray) -> np.ndarray:
        """Observation windows at episode steps tau [N, S] (0 <= tau <= T) -> [N, S, W, F] float32.

        first/length/start [N]: serial of step 0, T and start feature row of each episode.
        """
        W = self.window
        j = tau[:, :, None] + np.arange(1 - W, 1)  # [N, S, W]: episode step of each window bar
        market = self.market.features[start[:, None, None] + j]  # [N, S, W, 9]
        inside = (j >= 0) & (j < length[:, None, None])  # flat before the start and after the end
        rows = (first[:, None, None] + np.clip(j, 0, None)) % self.config.replay_capacity
        position = np.where(inside[..., None], self.states[rows], np.float32(0))  # [N, S, W, 6]
        return np.concatenate([market, position], axis=-1)

    def observations(self, indices: np.ndarray, ahead: int = 0) -> np.ndarray:
        """Observations [N, W, F] at step t+ahead (clamped to the episode end) of live positions."""
        rows = self._live_rows(np.asarray(indices, dtype=np.int64))
        t, length = self.step[rows], self.length[rows]
        tau = np.minimum(t + ahead, length)[:, None]
        return self._observations(self.serial[rows] - t, length, self.start[rows], tau)[:, 0]

    def _live_rows(self, indices: np.ndarray) -> np.ndarray:
        if ((indices < self._tail) | (indices >= self._head)).any():
            raise IndexError(f"positions outside the live range [{self._tail}, {self._head})")
        return indices % self.config.replay_capacity

    # ------------------------------------------------------------------ sample
    def sample(self, batch_size: int, bootstrap_obs: bool | None = None, hindsight: bool | None = None) -> Batch:
        """Draw `batch_size` positions with P(i) ~ priority^alpha (with replacement);
        `bootstrap_obs` adds the observations the value targets bootstrap from (default:
        unless ``value_bootstrap`` is "stored"), `hindsight` the hindsight paths (default:
        when ``hindsight_steps`` > 0)."""
        if bootstrap_obs is None:
            bootstrap_obs = self.config.value_bootstrap != "stored"
        if hindsight is None:
            hindsight = self.config.hindsight_steps > 0
        if len(self) == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        N, K, A = batch_size, self.config.unroll_steps, NUM_ACTIONS
        cdf = np.cumsum(self._p_alpha)  # [C]; empty rows add 0 and are never drawn
        rows = np.searchsorted(cdf, self.rng.random(N) * cdf[-1], side="right")  # [N]
        t, length, start = self.step[rows], self.length[rows], self.start[rows]
        first = self.serial[rows] - t  # [N]

        tk = t[:, None] + np.arange(K + 1)  # [N, K+1]: episode step of unroll step k
        inside = tk < length[:, None]  # [N, K+1]
        at = (first[:, None] + np.minimum(tk, length[:, None] - 1)) % self.config.replay_capacity
        obs = self._observations(first, length, start, np.minimum(tk, length[:, None]))  # [N, K+1, W, F]
        # n-step targets of every unroll step: z = reward_sum + gamma^m v(s_{t+k+m}).
        m = np.where(inside, self.offsets[at], 0)
        beta = np.minimum(tk + m, length[:, None])  # [N, K+1] bootstrap step, <= T
        # A target whose bootstrap state is the cut gets no bootstrap when the cut is taken
        # for a terminal (the ablation); by default the value at the cut completes it.
        cut = (tk + m >= length[:, None]) & (self.config.episode_end == "terminal")
        discounts = np.where(inside & ~cut, self.config.discount ** m.astype(np.float64), 0.0)
        sums = np.where(inside, self.reward_sums[at], 0.0)
        # Stored bootstrap: the root value at t+k+m; at the cut (t+k+m = T) the last one's.
        stored = self.root_values[
            (first[:, None] + np.minimum(beta, length[:, None] - 1)) % self.config.replay_capacity
        ]

        probs = self._p_alpha[rows] / cdf[-1]
        weights = (len(self) * probs) ** -self.config.priority_beta
        self.sampled += N
        return Batch(
            obs=obs[:, 0],
            next_obs=obs[:, 1:],
            actions=np.where(inside[:, :K], self.actions[at[:, :K]], self.rng.integers(0, A, (N, K))).astype(np.int64),
            target_values=(sums + discounts * stored).astype(np.float32),
            reward_sums=sums.astype(np.float32),
            bootstrap_discounts=discounts.astype(np.float32),
            target_rewards=np.where(inside[:, :K], self.rewards[at[:, :K]], 0).astype(np.float32),
            target_policies=np.where(inside[..., None], self.policies[at], 0).astype(np.float32),
            legal_masks=np.where(inside[..., None], self.legal[at], True),
            masks=inside,
            weights=(weights / weights.max()).astype(np.float32),
            indices=self.serial[rows],
            bootstrap_obs=self._observations(first, length, start, beta) if bootstrap_obs else None,
            **(self.hindsight_paths(rows) if hindsight else {}),
        )

    def hindsight_paths(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """For each position (replay rows [N]) and each legal action a: the path "a at t,
        then Hold" for m = min(n, T - t) bars, n = ``hindsight_steps``, replayed with the
        environment's arithmetic from the opening of the trade held at t (so spread, drawdown
        penalty and position state are the environment's own); its discounted reward sum,
        gamma^m (0 where ``episode_end`` is "terminal" and the path reaches the cut) and
        the observation at t + m, the played history before t + 1 and the path's position
        states after it. Keys: the ``hindsight_*`` fields of :class:`Batch` but targets."""
        cfg, C, W, A = self.config, self.config.replay_capacity, self.window, NUM_ACTIONS
        if cfg.hindsight_steps < 1:
            raise ValueError("hindsight paths need learning.hindsight_steps >= 1")
        t, length, start = self.step[rows], self.length[rows], self.start[rows]
        first = self.serial[rows] - t
        m = np.minimum(cfg.hindsight_steps, length - t)  # [N]
        beta = t + m  # [N] bootstrap step, <= T
        obs = np.repeat(self._observations(first, length, start, beta[:, None]), A, axis=1)  # [N, A, W, F]
        legal = self.legal[rows]  # [N, A]
        obs[~legal] = 0
        # One path per legal (position, action) pair, all replayed in one call: the trade
        # held at t from the step that opened it, then a, then Holds.
        i, a = np.nonzero(legal)  # [P] each
        opened = self.opened[rows[i]]  # [P] episode step
        held = t[i] - opened  # [P] played steps before a
        lengths = held + m[i] + (beta[i] < length[i])  # held steps, a, m - 1 Holds, one more for the state at t + m
        offsets = np.cumsum(lengths) - lengths  # [P] first row of each path
        path = np.repeat(np.arange(len(i)), lengths)  # [L]
        j = np.arange(len(path)) - offsets[path]  # [L] step within its path
        actions = np.full(len(path), Action.HOLD, np.int64)
        played = j < held[path]
        actions[played] = self.actions[((first[i] + opened)[path] + j)[played] % C]
        actions[offsets + held] = a
        states, rewards = replay_paths(self.market, start[i] + opened, actions, lengths, W, self.drawdown_penalty)
        sums = np.zeros((len(rows), A))
        gamma_k = cfg.discount ** np.arange(cfg.hindsight_steps)
        # A dot per path (~3 per position, a few microseconds each) rather than one masked
        # sum: the float sums stay bit for bit those of the path replayed alone.
        for k, decision in enumerate(offsets + held):
            sums[i[k], a[k]] = rewards[decision : decision + m[i[k]]] @ gamma_k[: m[i[k]]]
        steps = beta[i, None] + np.arange(1 - W, 1)  # [P, W] episode step of each window bar
        p, w = np.nonzero((steps > t[i, None]) & (steps < length[i, None]))  # window bars the path's states fill
        obs[i[p], a[p], w, -NUM_POSITION_FEATURES:] = states[offsets[p] + steps[p, w] - opened[p]]
        cut = (beta >= length) & (cfg.episode_end == "terminal")  # [N]
        discounts = np.where(cut, 0.0, cfg.discount ** m.astype(np.float64))[:, None] * legal  # [N, A]
        return {
            "hindsight_sums": sums.astype(np.float32),
            "hindsight_discounts": discounts.astype(np.float32),
            "hindsight_obs": obs,
        }

    def update_priorities(self, indices: np.ndarray, priorities: np.ndarray) -> None:
        """Set new priorities of sampled positions; positions evicted meanwhile are skipped."""
        indices = np.asarray(indices, dtype=np.int64)
        priorities = np.asarray(priorities, dtype=np.float64)
        live = (indices >= self._tail) & (indices < self._head)
        rows = indices[live] % self.config.replay_capacity
        p = np.maximum(priorities[live], self.config.priority_epsilon)
        self.priorities[rows] = p
        self._p_alpha[rows] = p**self.config.priority_alpha
        if p.size:
            self.max_priority = max(self.max_priority, float(p.max()))


# ---------------------------------------------------------------------- vectorised replay
_SIDE_SET_BY = np.array([0, 1, -1, 0], np.int8)  # side after a legal Buy / Sell / Close, or a path's first Hold


def replay_positions(
    market: MarketData, start_bar: int, actions: np.ndarray, window: int, drawdown_penalty: float
) -> tuple[np.ndarray, np.ndarray]:
    """Replay `actions` from feature row `start_bar`: the position state before each
    decision ([T, 6] float32) and the rewards ([T] float64). One path of :func:`replay_paths`."""
    return replay_paths(market, np.array([start_bar]), actions, np.array([len(actions)]), window, drawdown_penalty)


def replay_paths(
    market: MarketData,
    start_bars: np.ndarray,
    actions: np.ndarray,
    lengths: np.ndarray,
    window: int,
    drawdown_penalty: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Replay P independent paths, each from flat at its own feature row: start_bars [P],
    actions [L] (the paths one after another), lengths [P] (summing to L). Returns the
    position state before each decision ([L, 6] float32) and the rewards ([L] float64).

    The same numbers, bit for bit, as stepping a one-env ``VecTradingEnv`` through each
    path (see ``shared.episode.position_states``), computed over all steps at once: the
    side is set by the path's last non-Hold action; within a trade the running peak,
    maximum drawdown and accumulated drawdown are running max / sum, taken per trade on a
    padded grid so the float operations happen in the environment's order. Raises
    ValueError where the environment would (bad rows, an action outside 0..3 or an
    illegal one).
    """
    close = np.asarray(market.close, dtype=np.float64)
    a, starts, lengths = np.asarray(actions), np.asarray(start_bars, np.int64), np.asarray(lengths, np.int64)
    L, spread, pip = len(a), float(market.spread_pips), float(market.pip)
    if starts.shape != lengths.shape or lengths.sum() != L or (lengths < 0).any() or L == 0:
        raise ValueError(f"{len(starts)} start bars and lengths summing to {lengths.sum()} for {L} actions (need > 0)")
    outside = np.flatnonzero((starts < window - 1) | (starts + lengths > len(close) - 1))
    if outside.size:
        p = int(outside[0])
        raise ValueError(
            f"episodes must start at row >= {window - 1} and end by row {len(close) - 1}; "
            f"got start {starts[p]} with length {lengths[p]}"
        )
    if not np.issubdtype(a.dtype, np.integer) or (a < 0).any() or (a > 3).any():
        raise ValueError(f"actions must be integers in 0..3, got {a}")
    a = a.astype(np.int64)
    steps = np.arange(L)
    path = np.repeat(np.arange(len(starts)), lengths)  # [L] path of each step
    within = steps - (np.cumsum(lengths) - lengths)[path]  # [L] step within its path
    first = within == 0  # each path starts flat
    last_move = np.maximum.accumulate(np.where((a != Action.HOLD) | first, steps, -1))  # [L], >= its path's start
    side = _SIDE_SET_BY[a[last_move]]  # after each step; a path's opening Hold sets flat
    before = np.zeros(L, np.int8)
    before[1:] = side[:-1]
    before[first] = 0
    illegal = ~LEGAL_BY_SIDE[before + 1, a]
    if illegal.any():
        k = int(np.flatnonzero(illegal)[0])
        raise ValueError(f"illegal action {Action(int(a[k])).name} at step {within[k]} holding side {int(before[k])}")

    row = starts[path] + within
    price, next_price = close[row], close[row + 1]
    opening = (side != 0) & (side != before)
    fresh = opening | ((before != 0) & (side != before)) | first  # a new trade, none, or a new path
    opened_at = np.maximum.accumulate(np.where(opening | first, steps, 0))  # meaningful only while holding
    entry_price, entry_row = price[opened_at], row[opened_at]
    holding = side != 0
    # Same expressions, in the same order, as VecTradingEnv.step.
    pnl = side * (next_price - price) / pip - spread * opening
    unrealised = np.where(holding, side * (next_price - entry_price) / pip - spread, 0.0)

    seg = _Segments(fresh)
    peak = seg.accumulate(np.maximum, np.where(opening, -spread, 0.0)[seg.starts], unrealised)
    drawdown = peak - unrealised
    previous = np.where(fresh, 0.0, np.concatenate([[0.0], drawdown[:-1]]))
    increase = np.maximum(drawdown - previous, 0.0)
    accumulated = seg.accumulate(np.add, np.zeros(seg.count), increase)
    max_drawdown = seg.accumulate(np.maximum, np.zeros(seg.count), drawdown)
    rewards = pnl - drawdown_penalty * increase

    # State before decision k+1 = after step k; before a path's first decision it is flat.
    states = np.zeros((L, NUM_POSITION_FEATURES), np.float32)
    after = slice(0, L - 1)  # the state after a path's last step (force-closed, flat) has no row
    states[1:, 0] = side[after]
    states[1:, 1] = np.tanh(unrealised[after] / POSITION_SCALE)
    states[1:, 2] = np.tanh((row[after] + 1 - entry_row[after]) / POSITION_SCALE) * holding[after]
    states[1:, 3] = np.tanh(-drawdown[after] / POSITION_SCALE)
    states[1:, 4] = np.tanh(-max_drawdown[after] / POSITION_SCALE)
    states[1:, 5] = np.tanh(accumulated[after] / POSITION_SCALE)
    states[first] = 0
    return states, rewards


class _Segments:
    """Runs of steps between restarts of the trade statistics (`fresh` [T] bool; step 0
    always starts one), laid out as rows of a grid so that one ufunc.accumulate along
    the rows is the environment's sequential update, restarted at each run's start."""

    def __init__(self, fresh: np.ndarray) -> None:
        T = len(fresh)
        begins = fresh.copy()
        begins[0] = True
        self.starts = np.flatnonzero(begins)  # [S] first step of each run
        self.count = len(self.starts)
        self.id = np.cumsum(begins) - 1  # [T] run of each step
        self.pos = np.arange(T) - self.starts[self.id]  # [T] step within its run
        # S x (longest run + 1) cells: for one 360-step episode at most ~T^2/4 = ~32 k; for
        # a batch's hindsight paths, ~3 N paths of at most one trade's length each.
        self.width = int(self.pos.max()) + 2

    def accumulate(self, ufunc: np.ufunc, initial: np.ndarray, values: np.ndarray) -> np.ndarray:
        """[T]: ufunc(...ufunc(ufunc(initial[run], v_0), v_1)..., v_pos), per run."""
        grid = np.zeros((self.count, self.width))
        grid[:, 0] = initial
        grid[self.id, self.pos + 1] = values
        return ufunc.accumulate(grid, axis=1)[self.id, self.pos + 1]
