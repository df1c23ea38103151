"""The vectorised ReplayBuffer.insert stores exactly what the step-by-step one stored.

`reference_insert` is the insert as it was before vectorisation (a one-env
VecTradingEnv stepped through the actions by ``shared.episode.position_states``),
copied here so the comparison keeps a fixed reference; it also ties the replay to the
environment: a change of the environment's arithmetic that the replay does not follow
fails here.
"""

from __future__ import annotations

import numpy as np
import pytest

from shared.actions import Action, legal_mask, side_after
from shared.config import LearningConfig
from shared.episode import Episode, position_states
from shared.learning.replay import REWARD_ATOL, ReplayBuffer, replay_paths, replay_positions
from shared.learning.targets import n_step_returns, n_step_targets
from tests.helpers import random_walk_market

W, PENALTY = 16, 0.01
BUFFER_ARRAYS = (
    "states",
    "actions",
    "rewards",
    "root_values",
    "reward_sums",
    "offsets",
    "policies",
    "legal",
    "serial",
    "step",
    "length",
    "start",
    "opened",
    "priorities",
    "_p_alpha",
)


def reference_insert(self: ReplayBuffer, episode: Episode) -> np.ndarray:
    """ReplayBuffer.insert before vectorisation (git history of shared/learning/replay.py)."""
    C, T, cfg = self.config.replay_capacity, len(episode), self.config
    name = f"episode run_id={episode.run_id!r} start_bar={episode.start_bar}"
    if episode.symbol.upper() != self.market.symbol.upper():
        raise ValueError(f"{name} is for {episode.symbol}, this replay holds {self.market.symbol}")
    if T > C:
        raise ValueError(f"{name} has {T} positions, more than the replay capacity {C}")
    try:
        states, rewards = position_states(
            self.market, episode.start_bar, episode.actions, self.window, self.drawdown_penalty
        )
    except ValueError as exc:
        raise ValueError(f"{name} cannot be replayed: {exc}") from exc
    bad = np.flatnonzero(np.abs(rewards - episode.rewards) > REWARD_ATOL)
    if bad.size:
        raise ValueError(f"{name}: replayed rewards differ from the message's -- other data")
    if np.any(states[T] != 0):
        raise ValueError(f"{name}: the position is not flat after the last step")
    legal = legal_mask(states[:T, 0].astype(np.int64))  # [T, A]
    if not np.array_equal(legal, episode.legal_masks):
        raise ValueError(f"{name}: legal masks disagree with the replayed positions")

    policy = np.where(legal, episode.policy_targets, 0.0)  # no target mass on illegal actions
    total = policy.sum(-1, keepdims=True)
    policy = np.where(total > 0, policy / np.where(total > 0, total, 1), legal / legal.sum(-1, keepdims=True))
    sums, offsets = n_step_returns(rewards, cfg.td_steps, cfg.discount)  # [T] each
    z = n_step_targets(rewards, episode.root_values, cfg.td_steps, cfg.discount, float(episode.root_values[-1]))
    if cfg.initial_priority == "td":
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
    self.states[rows] = states[:T]
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
    for t, row in enumerate(rows):  # the step whose action opened the trade held before t
        holding = states[t, 0] != 0
        self.opened[row] = max(k for k in range(t) if episode.actions[k] != Action.HOLD) if holding else t
    self.priorities[rows] = priority
    self._p_alpha[rows] = priority**cfg.priority_alpha
    self.max_priority = max(self.max_priority, float(priority.max()))
    self._episodes.append((self._head, T))
    self._head += T
    return serials


@pytest.fixture(scope="module")
def market():
    return random_walk_market(900, seed=4)


def random_actions(rng: np.random.Generator, T: int, style: str) -> np.ndarray:
    """Legal actions: mostly Hold, every step a trade change ("churn"), or uniform."""
    weights = {"hold": [8, 1, 1, 1], "churn": [0, 1, 1, 1], "uniform": [1, 1, 1, 1]}[style]
    side, actions = 0, np.empty(T, np.uint8)
    for k in range(T):
        p = np.asarray(weights, float) * legal_mask(side)
        actions[k] = rng.choice(4, p=p / p.sum())
        side = int(side_after(side, actions[k]))
    return actions


def make_episode(market, rng, start: int, T: int, style: str, k: int) -> Episode:
    actions = random_actions(rng, T, style)
    states, rewards = position_states(market, start, actions, W, PENALTY)
    legal = legal_mask(states[:T, 0].astype(np.int64))
    policy = rng.dirichlet(np.ones(4), size=T) * rng.integers(0, 2, (T, 4))  # some rows all 0: the fallback
    return Episode(
        run_id=f"eq-{k}",
        symbol="EURUSD",
        split="train",
        start_bar=start,
        model_version=1,
        actions=actions,
        rewards=rewards.astype(np.float32),
        root_values=rng.normal(0, 20, T).astype(np.float32),
        policy_targets=policy.astype(np.float32),
        legal_masks=legal,
    )


def random_episodes(market, n: int, seed: int) -> list[Episode]:
    rng = np.random.default_rng(seed)
    last_row = len(market.close) - 1
    episodes = []
    for k in range(n):
        T = int(rng.choice([1, 2, 3, 7, 40, 90, 150]))
        start = int(rng.choice([W - 1, last_row - T, rng.integers(W - 1, last_row - T + 1)]))  # both edges too
        episodes.append(make_episode(market, rng, start, T, ("hold", "churn", "uniform")[k % 3], k))
    return episodes


def test_replay_positions_equal_the_environment_bit_for_bit(market):
    for e in random_episodes(market, 60, seed=0):
        states, rewards = position_states(market, e.start_bar, e.actions, W, PENALTY)
        fast_states, fast_rewards = replay_positions(market, e.start_bar, e.actions, W, PENALTY)
        T = len(e)
        assert np.array_equal(fast_rewards.view(np.uint64), rewards.view(np.uint64)), e.run_id
        assert np.array_equal(fast_states.view(np.uint32), states[:T].view(np.uint32)), e.run_id  # -0.0 too
        assert not states[T].any()  # why the vectorised replay stores no row after the end


def test_paths_replayed_together_equal_each_path_alone(market):
    # Hindsight replays many paths in one call; each starts flat, so none may carry a
    # trade, a drawdown or a side into the next (episodes of 1 step and held trades too).
    episodes = random_episodes(market, 40, seed=3)
    lengths = np.array([len(e) for e in episodes])
    states, rewards = replay_paths(
        market,
        np.array([e.start_bar for e in episodes]),
        np.concatenate([e.actions for e in episodes]),
        lengths,
        W,
        PENALTY,
    )
    for e, offset in zip(episodes, np.cumsum(lengths) - lengths, strict=True):
        alone_states, alone_rewards = replay_positions(market, e.start_bar, e.actions, W, PENALTY)
        here = slice(offset, offset + len(e))
        assert np.array_equal(rewards[here].view(np.uint64), alone_rewards.view(np.uint64)), e.run_id
        assert np.array_equal(states[here].view(np.uint32), alone_states.view(np.uint32)), e.run_id
    # An action illegal only because of the path before it is named with its path's step.
    with pytest.raises(ValueError, match="illegal action CLOSE at step 0 holding side 0"):
        replay_paths(market, np.array([100, 200]), np.array([1, 0, 3]), np.array([2, 1]), W, PENALTY)


@pytest.mark.parametrize("initial_priority", ["td", "max"])
def test_vectorised_insert_fills_the_buffer_like_the_reference(market, initial_priority):
    # Capacity 300 with episodes of up to 150 positions: evictions and wrap-around rows.
    config = LearningConfig(replay_capacity=300, unroll_steps=3, td_steps=5, initial_priority=initial_priority)
    fast = ReplayBuffer(market, config, W, PENALTY, seed=7)
    slow = ReplayBuffer(market, config, W, PENALTY, seed=7)
    for i, e in enumerate(random_episodes(market, 30, seed=1)):
        assert np.array_equal(fast.insert(e), reference_insert(slow, e))
        if i % 5 == 4:  # learner feedback between inserts changes max_priority for "max"
            serials = fast.sample(16).indices
            assert np.array_equal(serials, slow.sample(16).indices)
            new = np.random.default_rng(i).uniform(0, 30, 16)
            fast.update_priorities(serials, new)
            slow.update_priorities(serials, new)
        for name in BUFFER_ARRAYS:
            assert np.array_equal(getattr(fast, name), getattr(slow, name)), (name, e.run_id)
        assert (fast._head, fast._tail, list(fast._episodes), fast.max_priority) == (
            slow._head,
            slow._tail,
            list(slow._episodes),
            slow.max_priority,
        )
    assert fast.inserted > 3 * config.replay_capacity  # the ring wrapped several times
    a, b = fast.sample(64), slow.sample(64)  # the learner's inputs, observations included
    for name in a.__dataclass_fields__:
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


def test_refusals_match_the_reference(market):
    rng = np.random.default_rng(2)
    e = make_episode(market, rng, 100, 30, "churn", 0)
    config = LearningConfig(replay_capacity=300)
    buffer = ReplayBuffer(market, config, W, PENALTY)
    side = int(position_states(market, 100, e.actions, W, PENALTY)[0][5, 0])  # before decision 5
    illegal = e.actions.copy()
    illegal[5] = {1: 1, -1: 2, 0: 3}[side]  # Buy when long, Sell when short, Close when flat
    cases = {
        "illegal action": {"actions": illegal},
        "end by row": {"start_bar": len(market.close) - 10},
        "must start at row": {"start_bar": W - 2},
        "other data": {"rewards": e.rewards + np.float32(0.5) * (np.arange(30) == 11)},
    }
    for message, change in cases.items():
        bad = Episode(**{**e.__dict__, **change})
        with pytest.raises(ValueError, match=message):
            buffer.insert(bad)
        with pytest.raises(ValueError):
            reference_insert(ReplayBuffer(market, config, W, PENALTY), bad)
    assert len(buffer) == 0
