"""Tests of the learning part (shared/learning/): targets, replay, loss, learner, checkpoints."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shared.actions import legal_mask
from shared.data.bars import Bars
from shared.env import VecTradingEnv
from shared.episode import Episode
from shared.features import compute_features, warmup_bars
from shared.learning import (
    Batch,
    CheckpointError,
    Learner,
    LearningConfig,
    ReplayBuffer,
    SamplesPerInsert,
    checkpoint_path,
    latest_checkpoint,
    learning_rate,
    load_checkpoint,
    n_step_returns,
    n_step_targets,
    save_checkpoint,
    stochastic_muzero_loss,
)
from shared.market import MarketData
from shared.model import ModelConfig, StochasticMuZeroNet
from tests.helpers import REPO

W = 16  # a short window keeps the tests fast; the code takes any W
PENALTY = 0.01
SMALL = ModelConfig(
    window=W,
    tcn_channels=16,
    tcn_dilations=(1, 2, 4),
    hidden=64,
    residual_blocks=1,
    head_hidden=32,
    encoder_hidden=32,
    dropout=0.0,
)

# ----------------------------------------------------------------------------- fixtures


def make_market(n: int = 900, lookback: int = 10, seed: int = 0) -> MarketData:
    """Random-walk EURUSD-like hourly closes through the real feature pipeline."""
    rng = np.random.default_rng(seed)
    close = 1.1 + np.cumsum(rng.normal(0, 8e-4, n))
    ts = np.datetime64("2024-01-01T00:00", "ns") + np.arange(n) * np.timedelta64(1, "h")
    bars = Bars.from_arrays(ts, close, close, close, close)
    offset = warmup_bars(lookback)
    features = compute_features(bars, 1e-4, lookback).astype(np.float32)
    return MarketData("EURUSD", features, close[offset:], ts[offset:], 1e-4, 1.0, offset)


def play(market: MarketData, starts, length: int, seed: int = 0):
    """Random legal self-play; returns the episodes and every observation the env gave,
    [B, length + 1, W, 15] (index k = before decision k; k = length after the end)."""
    rng = np.random.default_rng(seed)
    B = len(starts)
    env = VecTradingEnv.for_market(
        market,
        num_envs=B,
        window=W,
        episode_length=length,
        drawdown_penalty=PENALTY,
    )
    observations = [env.reset(starts=np.asarray(starts)).copy()]
    actions, rewards, legal = [], [], []
    for _ in range(length):
        mask = env.legal_mask()
        action = np.argmax(rng.random((B, 4)) * mask * np.array([4, 1, 1, 1]), axis=1)  # mostly Hold
        legal.append(mask)
        actions.append(action)
        rewards.append(env.step(action).reward)
        observations.append(env.observe().copy())
    actions, rewards, legal = np.stack(actions, 1), np.stack(rewards, 1), np.stack(legal, 1)
    episodes = []
    for i in range(B):
        policy = rng.dirichlet(np.ones(4), size=length) * legal[i]
        episodes.append(
            Episode(
                run_id=f"test-{seed}-{i}",
                symbol="EURUSD",
                split="train",
                start_bar=int(starts[i]),
                model_version=0,
                actions=actions[i].astype(np.uint8),
                rewards=rewards[i].astype(np.float32),
                root_values=rng.normal(0, 5, length).astype(np.float32),
                policy_targets=(policy / policy.sum(1, keepdims=True)).astype(np.float32),
                legal_masks=legal[i],
            )
        )
    return episodes, np.stack(observations, 1)


@pytest.fixture(scope="module")
def market() -> MarketData:
    return make_market()


@pytest.fixture(scope="module")
def played(market):
    starts = [W - 1, 100, 250, 400, 555, 700]  # the first sees flat rows before its start
    return play(market, starts, length=40, seed=1)


def small_config(**overrides) -> LearningConfig:
    return LearningConfig(**{"replay_capacity": 1000, "unroll_steps": 3, "td_steps": 5, **overrides})


# ----------------------------------------------------------------------------- targets


def test_n_step_targets_match_a_hand_computation_with_the_end_inside_the_horizon():
    r = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    v = np.array([10.0, 20.0, 30.0, 40.0, 50.0])
    z = n_step_targets(r, v, td_steps=3, discount=0.9, final_value=60.0)
    expected = [
        1 + 0.9 * 2 + 0.81 * 3 + 0.729 * 40,  # bootstrap from v_3
        2 + 0.9 * 3 + 0.81 * 4 + 0.729 * 50,  # bootstrap from v_4
        3 + 0.9 * 4 + 0.81 * 5 + 0.729 * 60,  # t + n = 5 = T: a time limit, bootstrap from v(s_T)
        4 + 0.9 * 5 + 0.81 * 60,  # only 1 step left: m = 2
        5 + 0.9 * 60,
    ]
    np.testing.assert_allclose(z, expected, rtol=1e-12)
    np.testing.assert_allclose(n_step_targets(r, v, 1, 0.5), [11, 17, 23, 29, 5])  # v(s_T) = 0 by default
    np.testing.assert_allclose(n_step_targets(r, v, 50, 1.0), np.cumsum(r[::-1])[::-1])  # horizon past the end
    sums, offsets = n_step_returns(r, 3, 0.9)
    np.testing.assert_allclose(sums, [1 + 1.8 + 2.43, 2 + 2.7 + 3.24, 3 + 3.6 + 4.05, 4 + 4.5, 5])
    assert offsets.tolist() == [3, 3, 3, 2, 1]


# ----------------------------------------------------------------------------- replay


def test_terminal_ablation_drops_only_the_bootstrap_at_the_cut(market, played):
    episodes, _ = played
    T, K = 40, 3
    time_limit = ReplayBuffer(market, small_config(unroll_steps=K), W, PENALTY, seed=0)
    terminal = ReplayBuffer(market, small_config(unroll_steps=K, episode_end="terminal"), W, PENALTY, seed=0)
    for replay in (time_limit, terminal):
        for e in episodes:
            replay.insert(e)
    a, b = time_limit.sample(512), terminal.sample(512)  # same seed: the same positions
    assert np.array_equal(a.indices, b.indices)
    step = a.indices % T  # serials count from 0 and every episode is T long
    tk = step[:, None] + np.arange(K + 1)
    at_cut = a.masks & (tk + np.minimum(5, T - tk) >= T)  # m = min(n, T - t): bootstrap state s_T
    assert at_cut.any() and (a.masks & ~at_cut).any()
    assert (b.bootstrap_discounts[at_cut] == 0).all() and (a.bootstrap_discounts[at_cut] > 0).all()
    np.testing.assert_array_equal(b.bootstrap_discounts[~at_cut], a.bootstrap_discounts[~at_cut])
    np.testing.assert_array_equal(b.reward_sums, a.reward_sums)


def test_replay_observations_equal_what_the_environment_showed(market, played):
    episodes, seen = played
    T, K = 40, 3
    # 100 positions of capacity for 6 x 40: the ring wraps and the first episodes are evicted.
    replay = ReplayBuffer(market, small_config(replay_capacity=100, unroll_steps=K), W, PENALTY, seed=0)
    serials = [replay.insert(e) for e in episodes]
    assert len(replay) == 80 and replay.num_episodes == 2
    for i in (4, 5):  # the live episodes, stored across the ring's end
        got = replay.observations(serials[i])  # decisions 0..T-1
        assert np.array_equal(got, seen[i, :T])
        assert np.array_equal(replay.observations(serials[i][-1:], ahead=1)[0], seen[i, T])  # after the end
    # Every field of sampled batches, against the environment and the hand-made targets.
    where = {int(s): (i, t) for i in (4, 5) for t, s in enumerate(serials[i])}
    gamma = replay.config.discount
    z = {  # stored bootstrap: the root values, the last one's at the cut
        i: n_step_targets(episodes[i].rewards, episodes[i].root_values, 5, gamma, episodes[i].root_values[-1])
        for i in (4, 5)
    }
    batch = replay.sample(256, bootstrap_obs=True)
    for n, index in enumerate(batch.indices):
        i, t = where[int(index)]
        e = episodes[i]
        assert np.array_equal(batch.obs[n], seen[i, t])
        for k in range(K + 1):
            inside = t + k < T
            assert batch.masks[n, k] == inside
            if k < K:
                assert np.array_equal(batch.next_obs[n, k], seen[i, min(t + k + 1, T)])
                if inside:
                    assert batch.actions[n, k] == e.actions[t + k]
                    assert batch.target_rewards[n, k] == pytest.approx(e.rewards[t + k], abs=1e-3)
                else:
                    assert batch.target_rewards[n, k] == 0
            if inside:
                m = min(5, T - (t + k))
                assert batch.target_values[n, k] == pytest.approx(z[i][t + k], abs=2e-3)
                assert batch.bootstrap_discounts[n, k] == pytest.approx(gamma**m)
                expected_sum = sum(gamma**j * e.rewards[t + k + j] for j in range(m))
                assert batch.reward_sums[n, k] == pytest.approx(expected_sum, abs=2e-3)
                assert np.array_equal(batch.bootstrap_obs[n, k], seen[i, t + k + m])  # s_T at the cut
                assert np.array_equal(batch.legal_masks[n, k], e.legal_masks[t + k])
                np.testing.assert_allclose(batch.target_policies[n, k], e.policy_targets[t + k], atol=1e-5)
            else:
                assert batch.target_values[n, k] == 0 and batch.legal_masks[n, k].all()
                assert batch.reward_sums[n, k] == 0 and batch.bootstrap_discounts[n, k] == 0
    assert batch.masks[:, 0].all() and not batch.masks.all()  # some unrolls cross the end


def test_episode_with_a_tampered_reward_is_refused(market, played):
    replay = ReplayBuffer(market, small_config(), W, PENALTY)
    e = played[0][1]
    rewards = e.rewards.copy()
    rewards[7] += 0.5
    tampered = Episode(**{**e.__dict__, "rewards": rewards})
    with pytest.raises(ValueError, match=r"run_id='test-1-1' start_bar=100.*step 7.*other data"):
        replay.insert(tampered)
    with pytest.raises(ValueError, match="other data"):  # same actions on other costs
        ReplayBuffer(market, small_config(), W, drawdown_penalty=0.5).insert(e)
    assert len(replay) == 0
    replay.insert(e)
    assert len(replay) == len(e)


def test_fifo_eviction_counts_positions(market, played):
    episodes = played[0]
    replay = ReplayBuffer(market, small_config(replay_capacity=100), W, PENALTY, seed=0)
    first = replay.insert(episodes[0])
    replay.insert(episodes[1])
    assert len(replay) == 80
    third = replay.insert(episodes[2])  # 120 > 100: the oldest whole episode goes
    assert len(replay) == 80 and replay.num_episodes == 2 and replay.inserted == 120
    assert not np.isin(replay.sample(500).indices, first).any()
    before = replay.priorities.copy()
    replay.update_priorities(first[:5], np.full(5, 99.0))  # evicted since: ignored
    assert np.array_equal(replay.priorities, before)
    replay.insert(episodes[3])
    assert len(replay) == 80 and set(replay.sample(500).indices) <= set(third) | set(range(120, 160))


def test_priorities_change_sampling_frequency(market, played):
    replay = ReplayBuffer(market, small_config(priority_alpha=1.0, priority_beta=1.0), W, PENALTY, seed=3)
    serials = np.concatenate([replay.insert(e) for e in played[0][:2]])  # 80 positions
    replay.update_priorities(serials, np.ones(80))
    hot = serials[:10]
    replay.update_priorities(hot, np.full(10, 10.0))
    draws = np.concatenate([replay.sample(1000).indices for _ in range(10)])
    share = np.isin(draws, hot).mean()
    assert share == pytest.approx(100 / 170, abs=0.02)  # p^alpha / sum
    batch = replay.sample(200)
    is_hot = np.isin(batch.indices, hot)
    assert is_hot.any() and (~is_hot).any()
    # beta = 1: weights exactly undo the sampling bias, hot ones 10x smaller
    np.testing.assert_allclose(batch.weights[is_hot], 0.1, rtol=1e-6)
    np.testing.assert_allclose(batch.weights[~is_hot], 1.0, rtol=1e-6)


# ----------------------------------------------------------------------------- loss and learner


@pytest.fixture(scope="module")
def replay(market, played) -> ReplayBuffer:
    replay = ReplayBuffer(market, small_config(), W, PENALTY, seed=0)
    for e in played[0]:
        replay.insert(e)
    return replay


def test_every_sub_network_gets_gradient(replay):
    torch.manual_seed(0)
    model = StochasticMuZeroNet(SMALL)
    model.train()
    out = stochastic_muzero_loss(model, replay.sample(32).to("cpu"), replay.config)
    out.loss.backward()
    for name, net in model.sub_networks().items():
        grads = [p.grad for p in net.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, f"{name} gets no gradient"
    # the encoder is reached through the straight-through code (dynamics) as well as the commitment
    model.zero_grad()
    config = small_config(sigma_weight=0.0, commitment_weight=0.0)
    stochastic_muzero_loss(model, replay.sample(32).to("cpu"), config).loss.backward()
    assert sum(float(p.grad.abs().sum()) for p in model.chance_encoder.parameters()) > 0
    assert set(out.metrics) >= {
        "loss",
        "policy_loss",
        "value_loss",
        "q_loss",
        "sigma_loss",
        "commitment_loss",
        "reward_loss",
        "code_perplexity",
        "codes_used",
    }
    assert out.priorities.shape == (32,) and out.code_histogram.shape == (SMALL.chance_codes,)


def test_loss_falls_on_a_fixed_replay(market):
    # Stored targets: the probe batch is scored against the same targets the learner trains on.
    config = small_config(batch_size=32, lr=2e-3, value_bootstrap="stored", reanalyse_fraction=0.0)
    replay = ReplayBuffer(market, config, W, PENALTY, seed=0)
    for e in play(market, [100, 400, 700], length=30, seed=2)[0]:  # 90 positions, memorisable
        replay.insert(e)
    torch.manual_seed(0)
    model = StochasticMuZeroNet(SMALL)
    learner = Learner(model, config)
    probe = replay.sample(128).to("cpu")  # fixed evaluation batch
    model.train()
    with torch.no_grad():
        before = float(stochastic_muzero_loss(model, probe, config).loss)
    history = learner.train(replay, 200)
    with torch.no_grad():
        after = float(stochastic_muzero_loss(model, probe, config).loss)
    assert after < 0.5 * before, (before, after)
    assert np.mean([m["loss"] for m in history[-10:]]) < 0.5 * history[0]["loss"]
    assert {"grad_norm", "lr"} <= history[0].keys() and history[0]["lr"] == 2e-3
    assert learner.steps == 200 and replay.priorities[replay.priorities > 0].size == len(replay)


def test_learning_rate_falls_along_half_a_cosine_then_stays():
    config = small_config(lr=1e-3, lr_decay_steps=100, lr_final_fraction=0.1)
    expected = {0: 1e-3, 50: 1e-4 + 9e-4 * 0.5, 100: 1e-4, 250: 1e-4}
    assert {step: learning_rate(config, step) for step in expected} == pytest.approx(expected, rel=1e-12)
    assert learning_rate(config, 25) == pytest.approx(1e-4 + 9e-4 * (1 + math.cos(math.pi / 4)) / 2)
    assert learning_rate(small_config(lr=1e-3), 10_000) == 1e-3  # lr_decay_steps 0: constant


def test_samples_per_insert_controller():
    spi = SamplesPerInsert(ratio=8, min_size=100, tolerance=64)
    assert not spi.can_sample(inserted=50, sampled=0) and spi.allowed_steps(50, 0, 64) == 0
    assert spi.allowed_steps(inserted=360, sampled=0, batch_size=64) == (8 * 360 + 64) // 64
    assert spi.can_sample(360, 2880, 64) and not spi.can_sample(360, 2881, 64)
    assert not spi.can_insert(inserted=360, sampled=0) and spi.can_insert(360, 2880)
    assert SamplesPerInsert.from_config(LearningConfig()).ratio == 8


# ----------------------------------------------------------------------------- checkpoints


@pytest.fixture()
def trained(replay):
    torch.manual_seed(1)
    learner = Learner(StochasticMuZeroNet(SMALL), replay.config)
    learner.train(replay, 2)
    return learner


def test_checkpoint_round_trip_is_bit_exact(tmp_path, trained, monkeypatch):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    path = checkpoint_path(tmp_path, 2)
    digest = save_checkpoint(path, trained.model, 2, learning_config=trained.config, optimizer=trained.optimizer)
    ckpt = load_checkpoint(path)
    assert calls == [True]
    assert ckpt.step == 2 and ckpt.sha256 == digest and ckpt.format_version == 1
    assert ckpt.model_config() == SMALL and ckpt.learning_config() == trained.config
    state = trained.model.state_dict()
    assert state.keys() == ckpt.state_dict.keys()
    for name, tensor in state.items():
        assert tensor.dtype == ckpt.state_dict[name].dtype and torch.equal(tensor, ckpt.state_dict[name]), name
    restored = StochasticMuZeroNet(ckpt.model_config())
    restored.load_state_dict(ckpt.state_dict)
    optimizer = torch.optim.Adam(restored.parameters())
    optimizer.load_state_dict(ckpt.optimizer)
    for a, b in zip(trained.optimizer.state.values(), optimizer.state.values()):
        assert all(torch.equal(a[key], b[key]) for key in ("exp_avg", "exp_avg_sq", "step"))
    assert not list(tmp_path.glob("*.tmp"))
    resumed = Learner(StochasticMuZeroNet(SMALL), trained.config)
    trained.save(tmp_path / "again.pt")
    resumed.restore(load_checkpoint(tmp_path / "again.pt"))
    assert resumed.steps == trained.steps == 2
    assert all(torch.equal(a, b) for a, b in zip(resumed.model.state_dict().values(), state.values()))


def test_bad_checkpoints_are_refused(tmp_path, trained):
    path = checkpoint_path(tmp_path, 1)
    save_checkpoint(path, trained.model, 1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"{path.name}.*truncated or was modified"):
        load_checkpoint(path)
    tampered = bytearray(data)
    tampered[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(tampered))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    path.write_bytes(data)
    Path(f"{path}.sha256").unlink()
    with pytest.raises(CheckpointError, match="sidecar"):
        load_checkpoint(path)
    # A file with a valid digest that is not a checkpoint.
    junk = tmp_path / "junk.pt"
    save_checkpoint(junk, trained.model, 0)
    junk.write_bytes(b"not a torch file")
    import hashlib

    Path(f"{junk}.sha256").write_text(hashlib.sha256(b"not a torch file").hexdigest() + "  junk.pt\n")
    with pytest.raises(CheckpointError, match="not a loadable torch checkpoint"):
        load_checkpoint(junk)


def test_checkpoints_without_a_support_space_load_in_h_space_and_resume_only_with_it(tmp_path, trained):
    """Checkpoints saved before ``support_space`` existed were trained in h-space: they
    load with it. A learner resumes only from a checkpoint of its own model settings."""
    path = checkpoint_path(tmp_path, 2)
    save_checkpoint(path, trained.model, 2)
    ckpt = load_checkpoint(path)
    del ckpt.config["model"]["support_space"]  # as written before the field existed
    assert ckpt.model_config().support_space == SMALL.support_space == "h"
    Learner(StochasticMuZeroNet(SMALL), trained.config).restore(ckpt)
    in_pips = StochasticMuZeroNet(SMALL.model_copy(update={"support_space": "pips"}))
    with pytest.raises(CheckpointError, match=r"support_space 'h' -> 'pips'.*new folder"):
        Learner(in_pips, trained.config).restore(ckpt)


def test_latest_checkpoint_skips_damaged_files(tmp_path, trained):
    assert latest_checkpoint(tmp_path / "missing") is None
    for step in (5, 10, 20):
        save_checkpoint(checkpoint_path(tmp_path, step), trained.model, step)
    assert latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, 20)
    newest = checkpoint_path(tmp_path, 20)
    newest.write_bytes(newest.read_bytes()[:100])
    assert latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, 10)


def test_torch_load_is_never_called_without_weights_only():
    offenders = []
    for file in [*REPO.glob("shared/**/*.py"), *REPO.glob("services/**/*.py")]:
        for node in ast.walk(ast.parse(file.read_text(), filename=str(file))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "torch"
            ):
                ok = any(
                    k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                    for k in node.keywords
                )
                if not ok:
                    offenders.append(f"{file.relative_to(REPO)}:{node.lineno}")
    assert not offenders, f"torch.load without weights_only=True: {offenders}"


# ----------------------------------------------------------------------------- the loss, by hand


class ConstantModel(torch.nn.Module):
    """Every head outputs a learnable bias (all 0 at start): softmax is uniform, so each
    cross-entropy is log(#classes) whatever the target, and the total is countable by hand."""

    BINS, CODES, A = 5, 3, 4

    def __init__(self):
        super().__init__()
        from shared.model.support import scalar_to_support, support_to_scalar

        self._to_support, self._to_scalar = scalar_to_support, support_to_scalar
        zeros = torch.nn.Parameter
        self.policy = zeros(torch.zeros(self.A))
        self.value = zeros(torch.zeros(self.BINS))
        self.q = zeros(torch.zeros(self.BINS))
        self.reward = zeros(torch.zeros(self.BINS))
        self.sigma = zeros(torch.zeros(self.CODES))
        self.code = zeros(torch.zeros(self.CODES))

    def to_support(self, x):
        return self._to_support(x, self.BINS, 10.0)

    def to_scalar(self, logits):
        return self._to_scalar(logits, 10.0)

    def represent(self, obs):
        return torch.zeros(obs.shape[0], 2)

    def predict(self, state):
        N = state.shape[0]
        return self.policy.expand(N, -1), self.value.expand(N, -1)

    def afterstate(self, state, action):
        return state

    def afterstate_predict(self, afterstate):
        N = afterstate.shape[0]
        return self.sigma.expand(N, -1), self.q.expand(N, -1)

    def dynamics(self, afterstate, code):
        return afterstate, self.reward.expand(afterstate.shape[0], -1)

    def encode_chance(self, obs):
        probs = torch.softmax(self.code, -1).expand(obs.shape[0], -1)
        onehot = F.one_hot(probs.argmax(-1), self.CODES).to(probs.dtype)
        return onehot + probs - probs.detach(), probs


def test_total_loss_priorities_and_gradients_by_hand():
    N, K, W, F_, A = 2, 2, 3, 15, 4
    masks = np.array([[1, 1, 1], [1, 1, 0]], bool)  # sample 1's last unroll step is past the episode end
    legal = np.ones((N, K + 1, A), bool)
    legal[1, 0, 3] = False  # flat: 3 legal actions
    z = np.array([[4.0, 2.0, 1.0], [-3.0, 0.5, 0.0]], np.float32)
    batch = Batch(
        obs=np.zeros((N, W, F_), np.float32),
        next_obs=np.zeros((N, K, W, F_), np.float32),
        actions=np.zeros((N, K), np.int64),
        target_values=z,
        reward_sums=z,
        bootstrap_discounts=np.zeros_like(z),
        target_rewards=np.array([[1.0, -1.0], [2.0, 0.0]], np.float32),
        target_policies=np.eye(A, dtype=np.float32)[[[1, 2, 0], [0, 1, 0]]] * masks[..., None],
        legal_masks=legal,
        masks=masks,
        weights=np.array([1.0, 0.5], np.float32),
        indices=np.arange(N),
    ).to("cpu")
    config = LearningConfig(
        unroll_steps=K,
        policy_weight=1.0,
        value_weight=0.25,
        q_weight=0.5,
        reward_weight=2.0,
        sigma_weight=1.0,
        commitment_weight=0.25,
        code_diversity_weight=0.1,
    )
    model = ConstantModel()
    out = stochastic_muzero_loss(model, batch, config)

    lb, lc = math.log(5), math.log(3)
    commit = 1 - 1 / 3  # ||one-hot - uniform||^2 over 3 codes
    scale = [1.0, 1 / K, 1 / K]  # initial-state predictions count 1, recurrent ones 1/K; Q at k=0 counts 1 too

    def per_sample(n):
        m = masks[n]
        policy = sum(scale[k] * m[k] * math.log(legal[n, k].sum()) for k in range(K + 1))
        value = sum(scale[k] * m[k] * lb for k in range(K + 1))
        q = sum(scale[k] * m[k] * lb for k in range(K))
        sigma = sum(m[k] * lc / K for k in range(K))
        commitment = sum(m[k] * commit / K for k in range(K))
        reward = sum(m[k] * lb / K for k in range(K))
        return 1.0 * policy + 0.25 * value + 0.5 * q + 2.0 * reward + 1.0 * sigma + 0.25 * commitment

    # importance-weighted mean, plus the diversity term: every transition took code 0, so 1 - 0 / log 3 = 1
    expected = (1.0 * per_sample(0) + 0.5 * per_sample(1)) / N + 0.1 * 1.0
    assert float(out.loss.detach()) == pytest.approx(expected, rel=1e-6)
    np.testing.assert_allclose(out.priorities, [4.0, 3.0], atol=1e-6)  # |v0 - z0| with v0 = 0

    out.loss.backward()
    # d loss / d reward logits = weight * sum over steps of mask / K * (softmax - two-hot target), averaged
    target = model.to_support(batch.target_rewards)  # [N, K, 5]
    coeff = torch.tensor(masks[:, :K] / K * np.array([[1.0], [0.5]]), dtype=torch.float32)  # [N, K]
    expected_grad = 2.0 * (coeff[..., None] * (0.2 - target)).sum((0, 1)) / N
    torch.testing.assert_close(model.reward.grad, expected_grad.to(model.reward.grad.dtype))


class ShiftModel(ConstantModel):
    """ConstantModel whose state is the newest bar's first two features and whose dynamics
    add a learnable shift: the consistency term is countable by hand."""

    def __init__(self):
        super().__init__()
        self.shift = torch.nn.Parameter(torch.tensor([1.0, -1.0]))

    def represent(self, obs):
        return obs[:, -1, :2]

    def dynamics(self, afterstate, code):
        return afterstate + self.shift, self.reward.expand(afterstate.shape[0], -1)


def test_consistency_loss_by_hand():
    N, K, W, F_ = 2, 2, 3, 15
    masks = np.array([[1, 1, 1], [1, 0, 0]], bool)  # sample 1: only its first transition is real
    obs = np.zeros((N, W, F_), np.float32)
    obs[:, -1, :2] = [[1.0, 2.0], [0.5, 0.5]]
    next_obs = np.zeros((N, K, W, F_), np.float32)
    next_obs[:, :, -1, :2] = [[[2.0, 1.0], [0.0, 3.0]], [[1.0, 1.0], [9.0, 9.0]]]
    zeros = np.zeros((N, K + 1), np.float32)
    batch = Batch(
        obs=obs,
        next_obs=next_obs,
        actions=np.zeros((N, K), np.int64),
        target_values=zeros,
        reward_sums=zeros,
        bootstrap_discounts=zeros,
        target_rewards=np.zeros((N, K), np.float32),
        target_policies=np.full((N, K + 1, 4), 0.25, np.float32),
        legal_masks=np.ones((N, K + 1, 4), bool),
        masks=masks,
        weights=np.array([1.0, 0.5], np.float32),
        indices=np.arange(N),
    ).to("cpu")
    model = ShiftModel()
    without = stochastic_muzero_loss(model, batch, LearningConfig(unroll_steps=K))
    out = stochastic_muzero_loss(model, batch, LearningConfig(unroll_steps=K, consistency_weight=2.0))

    def cos(a, b):
        a, b = np.asarray(a), np.asarray(b)
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    # states reached: s1 = s0 + (1, -1), s2 = s1 + (1, -1); targets h(o_{t+1}), h(o_{t+2})
    sample0 = ((1 - cos([2, 1], [2, 1])) + (1 - cos([3, 0], [0, 3]))) / K  # 0 and 1, over K
    sample1 = (1 - cos([1.5, -0.5], [1, 1])) / K  # the second transition is past the end
    expected = 2.0 * (1.0 * sample0 + 0.5 * sample1) / N
    assert float((out.loss - without.loss).detach()) == pytest.approx(expected, rel=1e-5)
    assert out.metrics["consistency_loss"] == pytest.approx((sample0 + sample1) / N, rel=1e-5)
    out.loss.backward()
    assert model.shift.grad is not None and model.shift.grad.abs().sum() > 0  # through the dynamics only


def test_code_diversity_loss_by_hand():
    from shared.learning.losses import code_diversity_loss

    mask = torch.ones(2, 1, dtype=torch.bool)
    one_code = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]])
    both = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    assert float(code_diversity_loss(one_code, mask)) == pytest.approx(1.0)
    assert float(code_diversity_loss(both, mask)) == pytest.approx(0.0, abs=1e-6)
    half = torch.tensor([[[0.75, 0.25]], [[0.75, 0.25]]])
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert float(code_diversity_loss(half, mask)) == pytest.approx(1 - entropy / math.log(2), rel=1e-5)


# ----------------------------------------------------------------------------- fresh targets (reanalyse.py)


def test_value_targets_bootstrap_from_the_target_network(market, played):
    from shared.learning.reanalyse import bootstrap_values

    replay = ReplayBuffer(market, small_config(), W, PENALTY, seed=0)
    for e in played[0]:
        replay.insert(e)
    torch.manual_seed(0)
    target = StochasticMuZeroNet(SMALL).eval()
    batch = replay.sample(128, bootstrap_obs=True).to("cpu")
    z = bootstrap_values(target, batch)
    with torch.no_grad():
        for n in range(16):
            for k in range(batch.masks.shape[1]):
                _, _, v = target.initial_inference(batch.bootstrap_obs[n, k][None])
                expected = batch.reward_sums[n, k] + batch.bootstrap_discounts[n, k] * v[0]
                assert float(z[n, k]) == pytest.approx(float(expected), abs=1e-5)
    past_end = ~batch.masks
    assert past_end.any() and (z[past_end] == 0).all()  # masked in the loss; no bootstrap past the end


def test_search_bootstrap_uses_the_value_of_the_improved_policy(market, played):
    """value_bootstrap="search": z = reward_sum + discount * sum_a pi'(a) completed Q(a) of a
    noise-free search from the bootstrap state, each root as if searched alone."""
    from shared.learning.reanalyse import bootstrap_values
    from shared.search import SearchConfig, run_search

    replay = ReplayBuffer(market, small_config(value_bootstrap="search"), W, PENALTY, seed=0)
    for e in played[0]:
        replay.insert(e)
    torch.manual_seed(0)
    target = StochasticMuZeroNet(SMALL).eval()
    batch = replay.sample(16).to("cpu")
    search = SearchConfig(num_simulations=4, gumbel_scale=1.0, num_chance_codes=SMALL.chance_codes)
    z = bootstrap_values(target, batch, search)
    quiet = search.model_copy(update={"gumbel_scale": 0.0})
    for n in range(4):
        for k in range(batch.masks.shape[1]):
            obs = batch.bootstrap_obs[n, k][None]
            side = obs[:, -1, 9].round().long()
            legal = torch.as_tensor(legal_mask(side.numpy()))
            out = run_search(target, obs, legal, side, quiet)
            visits, q = out.visit_counts[0], out.tree.node_values[0, out.tree.action_children[0, 0]]
            assert (visits[legal[0]] > 0).all()  # 4 simulations visit every legal action: Q is complete
            by_hand = (out.policy_target[0] * q).sum()  # the policy is 0 on illegal actions
            expected = batch.reward_sums[n, k] + batch.bootstrap_discounts[n, k] * by_hand
            assert float(z[n, k]) == pytest.approx(float(expected), abs=1e-4)
    network = bootstrap_values(target, batch)
    assert not torch.allclose(z[batch.masks], network[batch.masks])  # a different estimate than the value head's


@pytest.mark.parametrize("mode", ["search", "network", "stored"])
def test_refresh_targets_follows_the_bootstrap_mode(replay, mode):
    """Each value_bootstrap mode: where z comes from and how many roots are searched."""
    from shared.learning.reanalyse import bootstrap_values, refresh_targets
    from shared.search import SearchConfig

    torch.manual_seed(0)
    target = StochasticMuZeroNet(SMALL).eval()
    batch = replay.sample(8).to("cpu")
    search = SearchConfig(num_simulations=4, gumbel_scale=0.0, num_chance_codes=SMALL.chance_codes)
    fresh, searched = refresh_targets(target, batch, bootstrap=mode, fraction=0.25, search=search)
    reanalysed = int(batch.masks[:2].sum())  # ceil(0.25 * 8) rows, their steps inside the episode
    expected = {
        "search": bootstrap_values(target, batch, search),
        "network": bootstrap_values(target, batch),
        "stored": batch.target_values,
    }[mode]
    assert torch.equal(fresh.target_values, expected)
    assert searched == reanalysed + (batch.masks.numel() if mode == "search" else 0)
    with pytest.raises(ValueError, match="bootstrap must be one of"):
        refresh_targets(target, batch, bootstrap=True, fraction=0.25, search=search)  # type: ignore[arg-type]


def test_reanalyse_searches_the_first_rows_inside_the_episode(replay):
    from shared.learning.reanalyse import reanalyse_policies
    from shared.search import SearchConfig, run_search

    torch.manual_seed(0)
    target = StochasticMuZeroNet(SMALL).eval()
    batch = replay.sample(8).to("cpu")
    search = SearchConfig(num_simulations=4, gumbel_scale=0.0, num_chance_codes=SMALL.chance_codes)
    policies, searched = reanalyse_policies(target, batch, fraction=0.25, search=search)
    assert torch.equal(policies[2:], batch.target_policies[2:])  # ceil(0.25 * 8) = 2 rows refreshed
    obs = torch.cat([batch.obs[:2, None], batch.next_obs[:2]], 1)
    inside = batch.masks[:2]
    assert searched == int(inside.sum())
    roots = obs[inside]
    direct = run_search(target, roots, batch.legal_masks[:2][inside], roots[:, -1, 9].round().long(), search)
    torch.testing.assert_close(policies[:2][inside], direct.policy_target.float())
    assert torch.equal(policies[:2][~inside], batch.target_policies[:2][~inside])
    assert not torch.allclose(policies[:2][inside], batch.target_policies[:2][inside])  # the stored ones were random


def test_target_network_follows_the_learner_every_interval(replay):
    torch.manual_seed(0)
    learner = Learner(StochasticMuZeroNet(SMALL), small_config(target_update_interval=3, reanalyse_fraction=0.0))

    def same() -> bool:
        return all(
            torch.equal(a, b) for a, b in zip(learner.model.state_dict().values(), learner.target.state_dict().values())
        )

    initial = {k: v.clone() for k, v in learner.model.state_dict().items()}
    learner.step(replay.sample(8), replay)  # step 0 syncs, then learns
    assert not same()
    learner.train(replay, 2)
    assert all(torch.equal(initial[k], v) for k, v in learner.target.state_dict().items())  # still step 0's
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    learner.step(replay.sample(8), replay)  # step 3: synced before the update
    assert all(torch.equal(before[k], v) for k, v in learner.target.state_dict().items())
    assert not same() and not any(p.requires_grad for p in learner.target.parameters())


def test_save_restore_then_n_steps_equals_n_uninterrupted_steps(tmp_path, market, played):
    """Model, optimizer and step count round-trip; the target network is re-synced at
    restore, so a checkpoint taken at a target refresh resumes bit for bit. What a
    checkpoint does not hold (documented in checkpoint.py): the replay's contents and RNG,
    and the Reanalyse search's generator (reseeded), so this test shares one replay state.
    The learning rate is still falling at the restore (steps 4 and 5), so its schedule resumes too."""
    config = small_config(target_update_interval=2, reanalyse_fraction=0.0, lr=1e-3, lr_decay_steps=6)

    def fresh_replay():
        r = ReplayBuffer(market, config, W, PENALTY, seed=5)
        for e in played[0]:
            r.insert(e)
        return r

    torch.manual_seed(0)
    a = Learner(StochasticMuZeroNet(SMALL), config)
    replay_a = fresh_replay()
    a.train(replay_a, 4)
    a.save(tmp_path / "ckpt.pt")
    state = (
        replay_a.rng.bit_generator.state,
        replay_a.priorities.copy(),
        replay_a._p_alpha.copy(),
        replay_a.max_priority,
    )
    a.train(replay_a, 3)

    torch.manual_seed(123)  # a different init: everything must come from the checkpoint
    b = Learner(StochasticMuZeroNet(SMALL), config)
    b.restore(load_checkpoint(tmp_path / "ckpt.pt"))
    replay_b = fresh_replay()
    replay_b.rng.bit_generator.state, replay_b.priorities[:], replay_b._p_alpha[:], replay_b.max_priority = state
    resumed = b.train(replay_b, 3)
    assert b.steps == a.steps == 7
    assert [m["lr"] for m in resumed] == [learning_rate(config, step) for step in (4, 5, 6)]
    for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(x, y), name


def test_chance_codes_spread_over_the_codebook_on_a_noisy_series():
    """On a series with stochastic outcomes the encoder uses many codes (perplexity well
    above 1) with the diversity loss, and collapses to ~1 code without it."""
    from shared.config import Config
    from shared.data.synthetic import synthetic_bars
    from shared.market import market_from_bars
    from shared.selfplay import SelfPlay

    config = Config(
        env=dict(episode_length=200, window=W),
        model=dict(window=W),
        train=dict(num_envs=8),
        learning=dict(reanalyse_fraction=0.0, batch_size=32),
    )
    market = market_from_bars("SYNTH", synthetic_bars("sine", 6000, seed=0), config)
    episodes = SelfPlay.from_config(config, market, seed=0).play("random")
    perplexity = {}
    for weight in (0.0, 1.0):
        learning = config.learning.model_copy(update={"code_diversity_weight": weight, "lr": 1e-3})
        replay = ReplayBuffer(market, learning, config.env.window, config.env.drawdown_penalty, seed=0)
        for e in episodes:
            replay.insert(e)
        torch.manual_seed(0)
        history = Learner(StochasticMuZeroNet(SMALL), learning).train(replay, 120)
        perplexity[weight] = np.mean([m["code_perplexity"] for m in history[-20:]])
    assert perplexity[1.0] > 3.0, perplexity
    assert perplexity[0.0] < 1.5, perplexity
