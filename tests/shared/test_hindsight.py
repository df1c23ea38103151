"""Hindsight targets (``learning.hindsight_steps``): the root's every legal action a gets
the target "a, then Hold for m bars, then the bootstrap value". The replay's paths are
held to the environment itself: the same actions stepped through a one-env
VecTradingEnv (``position_states``) and stored as an episode of their own give the same
rewards and the same observation where the path ends."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from shared.actions import Action, legal_mask
from shared.config import LearningConfig, ModelConfig
from shared.episode import Episode, position_states
from shared.learning.learner import Learner
from shared.learning.losses import soft_cross_entropy, stochastic_muzero_loss
from shared.learning.reanalyse import refresh_targets
from shared.learning.replay import ReplayBuffer
from shared.model import StochasticMuZeroNet
from tests.helpers import random_walk_market
from tests.shared.test_replay_insert import PENALTY, W, random_episodes  # episodes with a drawdown penalty

MODEL = ModelConfig(
    window=W, tcn_channels=8, tcn_dilations=(1, 2), hidden=32, residual_blocks=1, head_hidden=16, encoder_hidden=16
)


@pytest.fixture(scope="module")
def market():
    return random_walk_market(900, seed=4)


def as_episode(actions: np.ndarray, start: int, market, penalty: float = PENALTY) -> Episode:
    states, rewards = position_states(market, start, actions, W, penalty)
    T = len(actions)
    return Episode(
        run_id="path",
        symbol="EURUSD",
        split="train",
        start_bar=start,
        model_version=1,
        actions=actions.astype(np.uint8),
        rewards=rewards.astype(np.float32),
        root_values=np.zeros(T, np.float32),
        policy_targets=np.full((T, 4), 0.25, np.float32),
        legal_masks=legal_mask(states[:T, 0].astype(np.int64)),
    )


@pytest.mark.parametrize("episode_end", ["time_limit", "terminal"])
def test_hindsight_paths_equal_the_environment_playing_them(market, episode_end):
    n, gamma = 5, 0.9
    config = LearningConfig(replay_capacity=400, td_steps=3, discount=gamma, hindsight_steps=n, episode_end=episode_end)
    replay = ReplayBuffer(market, config, W, PENALTY, seed=1)
    where = {}  # serial -> (episode, t)
    for episode in random_episodes(market, 30, seed=2):
        for t, serial in enumerate(replay.insert(episode)):
            where[int(serial)] = (episode, t)
    batch = replay.sample(48)
    checked = set()
    for i, serial in enumerate(batch.indices):
        episode, t = where[int(serial)]
        T = len(episode)
        m = min(n, T - t)
        for a in range(4):
            if not episode.legal_masks[t, a]:
                assert batch.hindsight_discounts[i, a] == 0 and not batch.hindsight_obs[i, a].any()
                continue
            tail = m - 1 + (t + m < T)  # one more Hold: the state the path ends in
            path = np.concatenate([episode.actions[:t], [a], np.full(tail, Action.HOLD)]).astype(np.int64)
            _, rewards = position_states(market, episode.start_bar, path, W, PENALTY)
            expected = sum(gamma**k * rewards[t + k] for k in range(m))
            assert batch.hindsight_sums[i, a] == pytest.approx(expected, abs=1e-4)
            cut = t + m == T and episode_end == "terminal"
            assert batch.hindsight_discounts[i, a] == pytest.approx(0.0 if cut else gamma**m)
            # The path stored as an episode: its observation at t + m is the environment's.
            alone = ReplayBuffer(market, LearningConfig(replay_capacity=400), W, PENALTY)
            first = alone.insert(as_episode(path, episode.start_bar, market))[0]
            np.testing.assert_array_equal(batch.hindsight_obs[i, a], alone.observations(np.array([first]), t + m)[0])
            checked.add((episode.actions[t - 1] if t else -1, a, t + m == T))
    assert len(checked) > 12  # paths after every kind of previous action, cut and not


def test_holding_a_long_earns_the_price_move_and_closing_earns_nothing(market):
    # A trade opened at step 0, held at step 2: hindsight Hold is the move of 3 bars, Close 0.
    n, start = 3, 100
    config = LearningConfig(replay_capacity=100, discount=1.0, hindsight_steps=n)
    replay = ReplayBuffer(market, config, W, drawdown_penalty=0.0)
    actions = np.array([Action.BUY, Action.HOLD, Action.HOLD, Action.HOLD, Action.HOLD, Action.HOLD, Action.CLOSE])
    serials = replay.insert(as_episode(actions, start, market, penalty=0.0))
    paths = replay.hindsight_paths(serials[2:3] % config.replay_capacity)  # the replay row of step 2
    move = (market.close[start + 5] - market.close[start + 2]) / market.pip
    assert paths["hindsight_sums"][0, Action.HOLD] == pytest.approx(move, abs=1e-4)
    assert paths["hindsight_sums"][0, Action.CLOSE] == 0.0
    # Sell reverses: short for 3 bars, paying the new trade's spread.
    reversed_ = -move - market.spread_pips
    assert paths["hindsight_sums"][0, Action.SELL] == pytest.approx(reversed_, abs=1e-4)
    assert paths["hindsight_discounts"][0, Action.BUY] == 0.0  # Buy is illegal when long
    # After the Close the window's newest bars are flat; after the Hold they hold the long.
    assert not paths["hindsight_obs"][0, Action.CLOSE, -3:, -6:].any()
    assert (paths["hindsight_obs"][0, Action.HOLD, -3:, -6] == 1).all()


def test_the_hindsight_loss_is_the_mean_over_legal_actions_of_the_q_cross_entropy(market):
    torch.manual_seed(0)
    config = LearningConfig(replay_capacity=400, unroll_steps=2, td_steps=3, hindsight_steps=4, hindsight_weight=0.5)
    replay = ReplayBuffer(market, config, W, PENALTY, seed=3)
    for episode in random_episodes(market, 12, seed=5):
        replay.insert(episode)
    model = StochasticMuZeroNet(MODEL)
    batch, _ = refresh_targets(model, replay.sample(16).to("cpu"), bootstrap="network", fraction=0.0, search=None)  # type: ignore[arg-type]
    # The targets: the reward sums, then gamma^m times the value head where the path ends.
    legal = batch.hindsight_discounts > 0
    with torch.no_grad():
        values = model.initial_inference(batch.hindsight_obs[legal])[2]
    expected = batch.hindsight_sums.clone()
    expected[legal] += batch.hindsight_discounts[legal] * values
    torch.testing.assert_close(batch.hindsight_targets, expected)

    model.eval()  # no dropout: the two losses see the same network
    with_hindsight = stochastic_muzero_loss(model, batch, config)
    without = stochastic_muzero_loss(model, replace(batch, hindsight_targets=None), config)
    with torch.no_grad():
        state = model.represent(batch.obs)
        per_sample = []
        for i in range(len(state)):
            terms = []
            for a in np.flatnonzero(batch.legal_masks[i, 0].numpy()):
                q_logits = model.afterstate_predict(model.afterstate(state[i : i + 1], torch.tensor([a])))[1]
                target = model.to_support(batch.hindsight_targets[i, a : a + 1])
                terms.append(float(soft_cross_entropy(q_logits, target)))
            per_sample.append(np.mean(terms))
    by_hand = 0.5 * float((batch.weights.numpy() * np.array(per_sample)).mean())
    assert float((with_hindsight.loss - without.loss).detach()) == pytest.approx(by_hand, rel=1e-4)
    assert with_hindsight.metrics["hindsight_loss"] == pytest.approx(np.mean(per_sample), rel=1e-4)


def test_without_hindsight_steps_the_batch_holds_no_hindsight_fields(market):
    replay = ReplayBuffer(market, LearningConfig(replay_capacity=400, hindsight_steps=0), W, PENALTY, seed=3)
    for episode in random_episodes(market, 4, seed=5):
        replay.insert(episode)
    batch = replay.sample(8)
    assert batch.hindsight_obs is None and batch.hindsight_sums is None and batch.hindsight_targets is None


def test_the_learner_trains_on_hindsight_targets_when_configured(market):
    config = LearningConfig(replay_capacity=400, unroll_steps=2, batch_size=8, hindsight_steps=3)
    replay = ReplayBuffer(market, config, W, PENALTY, seed=3)
    for episode in random_episodes(market, 6, seed=5):
        replay.insert(episode)
    learner = Learner(StochasticMuZeroNet(MODEL), config)
    metrics = learner.step(replay.sample(config.batch_size), replay)
    assert metrics["hindsight_loss"] > 0 and np.isfinite(metrics["loss"])
