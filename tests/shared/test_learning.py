"""Tests of the learning part (shared/learning/): targets, replay, loss, learner, checkpoints."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.data.bars import Bars
from shared.env import VecTradingEnv
from shared.episode import Episode
from shared.features import compute_features, warmup_bars
from shared.learning import (
    CheckpointError,
    Learner,
    LearningConfig,
    ReplayBuffer,
    SamplesPerInsert,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
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
    env = VecTradingEnv(
        market.features,
        market.close,
        num_envs=B,
        pip=market.pip,
        spread_pips=market.spread_pips,
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
    z = n_step_targets(r, v, td_steps=3, discount=0.9)
    expected = [
        1 + 0.9 * 2 + 0.81 * 3 + 0.729 * 40,  # bootstrap from v_3
        2 + 0.9 * 3 + 0.81 * 4 + 0.729 * 50,  # bootstrap from v_4
        3 + 0.9 * 4 + 0.81 * 5,  # t + n = 5 = T: the end is terminal, no bootstrap
        4 + 0.9 * 5,
        5,
    ]
    np.testing.assert_allclose(z, expected, rtol=1e-12)
    np.testing.assert_allclose(n_step_targets(r, v, 1, 0.5), [11, 17, 23, 29, 5])
    np.testing.assert_allclose(n_step_targets(r, v, 50, 1.0), np.cumsum(r[::-1])[::-1])  # horizon past the end


# ----------------------------------------------------------------------------- replay


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
    z = {i: n_step_targets(episodes[i].rewards.astype(np.float64), episodes[i].root_values, 5, 0.997) for i in (4, 5)}
    batch = replay.sample(256)
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
                assert batch.target_values[n, k] == pytest.approx(z[i][t + k], abs=2e-3)
                assert np.array_equal(batch.legal_masks[n, k], e.legal_masks[t + k])
                np.testing.assert_allclose(batch.target_policies[n, k], e.policy_targets[t + k], atol=1e-5)
            else:
                assert batch.target_values[n, k] == 0 and batch.legal_masks[n, k].all()
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
    config = small_config(batch_size=32, lr=2e-3)
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
