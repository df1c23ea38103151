"""``microzero analyze tcn``: the extracted kernels and attention weights are the
model's own, and the command writes real figures and numbers (or fails cleanly)."""

from __future__ import annotations

import json
from io import BytesIO

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shared.analysis import qvalues
from shared.analysis.qvalues import long_observations, q_differences, summarise
from shared.analysis.tcn import NEWEST, attention_weights, flat_observations, tcn_kernels
from shared.cli import main
from shared.config import load_config
from shared.data.store import BarStore
from shared.data.synthetic import synthetic_bars
from shared.learning.checkpoint import save_checkpoint, write_checkpoint_bytes
from shared.market import load_market
from shared.model import ModelConfig, StochasticMuZeroNet
from shared.splits import make_splits
from tests.helpers import random_walk_market

W = 16
TINY = ModelConfig(
    window=W,
    tcn_channels=8,
    tcn_dilations=(1, 2, 4),
    hidden=32,
    residual_blocks=1,
    head_hidden=16,
    encoder_hidden=16,
    dropout=0.0,
    support_bins=21,
    support_max=20.0,
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tiny_model(seed: int = 0) -> StochasticMuZeroNet:
    """Eval-mode network whose attention is far from uniform and whose BatchNorm
    statistics are not the identity, so a wrong axis or a wrong scale shows."""
    torch.manual_seed(seed)
    model = StochasticMuZeroNet(TINY)
    with torch.no_grad():
        model.representation_net.score.weight.mul_(25.0)
        for block in model.representation_net.tcn.blocks:
            block.norm.running_var.uniform_(0.2, 3.0)
            block.norm.running_mean.normal_(0, 0.3)
            block.norm.weight.uniform_(0.5, 2.0)
    return model.eval()


def test_attention_weights_are_the_ones_the_model_pools_with():
    model = tiny_model()
    obs = torch.randn(6, W, TINY.input_features)
    with torch.no_grad():
        state_before = model.representation_net(obs)
    pooled_by_model = {}
    trunk_hook = model.representation_net.trunk.register_forward_pre_hook(
        lambda _m, inputs: pooled_by_model.__setitem__("x", inputs[0][:, : TINY.tcn_channels].clone())
    )
    weights, z = attention_weights(model, obs)
    trunk_hook.remove()

    assert weights.shape == (6, W) and z.shape == (6, W, TINY.tcn_channels)
    torch.testing.assert_close(weights.sum(1), torch.ones(6), rtol=0, atol=1e-6)
    assert float(weights.max(1).values.min()) > 2 / W  # peaked: a wrong axis could not reproduce the pooling
    torch.testing.assert_close((weights[..., None] * z).sum(1), pooled_by_model["x"], rtol=1e-6, atol=1e-6)
    # Reading the weights leaves no hook behind and does not change the model's results.
    rep = model.representation_net
    assert not rep._forward_hooks and not rep.tcn._forward_hooks and not rep.score._forward_hooks
    with torch.no_grad():
        assert torch.equal(model.representation_net(obs), state_before)


def test_kernels_are_the_conv_weights_with_their_lags_and_batchnorm_scale():
    model = tiny_model()
    kernels = tcn_kernels(model)
    blocks = list(model.representation_net.tcn.blocks)
    assert [k.dilation for k in kernels] == [1, 2, 4] and kernels[2].lags == [8, 4, 0]
    for kernel, block in zip(kernels, blocks):
        assert np.array_equal(kernel.weight, block.conv.weight.detach().numpy())
        norm = block.norm
        with torch.no_grad():  # BatchNorm in eval: y = (x - mean) * bn_scale + beta
            x = torch.randn(3, norm.num_features, 5)
            expected = (x - norm.running_mean[:, None]) * torch.from_numpy(kernel.bn_scale)[:, None] + norm.bias[
                :, None
            ]
            torch.testing.assert_close(norm(x), expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(kernel.mean_abs_per_tap(), np.abs(kernel.weight).mean((0, 1)), rtol=1e-6)
    # Lags: an impulse at bar t0 reaches the block's output through tap j at t0 + lag_j.
    block, kernel = blocks[1], kernels[1]
    x = torch.zeros(1, block.conv.in_channels, 20)
    x[0, 0, 5] = 1.0
    for j, lag in enumerate(kernel.lags):
        weight = torch.zeros_like(block.conv.weight)
        weight[:, :, j] = 1.0
        y = F.conv1d(F.pad(x, (block.left_pad, 0)), weight, dilation=block.conv.dilation)
        assert torch.nonzero(y[0, 0]).flatten().tolist() == [5 + lag]


def test_flat_observations_are_market_windows_with_a_flat_position():
    market = random_walk_market(600, seed=1)
    rows = np.array([W - 1, 200, 400])
    obs = flat_observations(market, rows, W)
    assert obs.shape == (3, W, 15)
    for i, row in enumerate(rows):
        assert np.array_equal(obs[i, :, :9], market.features[row - W + 1 : row + 1])
    assert not obs[:, :, 9:].any()


def test_long_observations_hold_the_long_bought_on_the_bar_before():
    market = random_walk_market(600, seed=1)
    rows = np.array([W, 200, 400])
    flat, long = flat_observations(market, rows, W), long_observations(market, rows, W)
    assert np.array_equal(long[:, :, :9], flat[:, :, :9])  # the same market window
    assert not long[:, :-1, 9:].any()  # flat before the newest bar
    assert long[:, -1, 9:].any() and not np.array_equal(long[0, -1, 9:], long[1, -1, 9:])  # long, with its own P&L


def test_q_differences_are_the_models_afterstate_q_values(monkeypatch):
    market = random_walk_market(600, seed=1)
    model = tiny_model()
    rows = np.arange(W, 300)
    monkeypatch.setattr(qvalues, "BATCH", 50)  # several forward passes, the last one short
    diffs = q_differences(model, market, rows, W)

    def q(obs, action):
        state = model.represent(torch.as_tensor(obs))
        after = model.afterstate(state, torch.full((len(obs),), action))
        return model.to_scalar(model.afterstate_predict(after)[1]).double().numpy()

    with torch.no_grad():
        flat, long = flat_observations(market, rows, W), long_observations(market, rows, W)
        np.testing.assert_allclose(diffs["open"], q(flat, 1) - q(flat, 2), rtol=1e-6, atol=1e-9)  # Buy - Sell
        np.testing.assert_allclose(diffs["hold"], q(long, 0) - q(long, 3), rtol=1e-6, atol=1e-9)  # Hold - Close
    assert diffs["open"].std() > 0 and diffs["hold"].std() > 0


def test_summary_slopes_and_correlations_by_hand():
    distance = np.array([-20.0, -10.0, 0.0, 10.0, 20.0])  # pips above the level
    move = np.array([12.0, 5.0, 1.0, -6.0, -12.0])
    opened = 0.25 * -distance  # follows the gap to the level exactly, a quarter of it
    held = np.array([1.0, -1.0, 1.0, -1.0, 1.0])  # follows nothing
    summary = summarise({"open": opened, "hold": held}, move, distance)
    assert summary["open"]["slope_on_level_gap"] == pytest.approx(0.25)
    assert summary["open"]["corr_with_level_gap"] == pytest.approx(1.0)
    assert summary["hold"]["slope_on_level_gap"] == pytest.approx(0.0)
    # move on -distance: sum(20*12 + 10*5 + 0 + 10*6 + 20*12) / (400 + 100 + 0 + 100 + 400) = 590 / 1000
    assert summary["move"]["slope_on_level_gap"] == pytest.approx(0.59)
    assert summary["open"]["corr_with_move"] == pytest.approx(np.corrcoef(-distance, move)[0, 1])
    assert summary["open"]["mean"] == pytest.approx(0.0) and summary["hold"]["std"] == pytest.approx(np.std(held))
    assert "slope_on_level_gap" not in summarise({"open": opened}, move)["open"]  # no level given
    constant = summarise({"open": np.full(5, 0.1)}, move, distance)  # a head that says the same everywhere
    assert constant["open"]["corr_with_move"] is None and constant["open"]["corr_with_level_gap"] is None
    assert constant["open"]["slope_on_level_gap"] == 0.0  # it does not follow the gap
    assert summarise({"open": opened}, move, np.full(5, 3.0))["open"]["slope_on_level_gap"] is None  # no gap varies


# ----------------------------------------------------------------------------- the command


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.delenv("MZ_CONFIG", raising=False)
    monkeypatch.setenv("MZ_DATA__DB_PATH", str(tmp_path / "bars.duckdb"))
    monkeypatch.setenv("MZ_DATA__CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MZ_PIPELINE__BEST_DIR", str(tmp_path / "best"))
    BarStore(tmp_path / "bars.duckdb").import_bars("SYNTH", synthetic_bars("sine", 1200, seed=2), source="test")
    return tmp_path


def assert_informative_png(png: bytes) -> None:
    assert png[:8] == PNG_SIGNATURE
    pixels = mpimg.imread(BytesIO(png), format="png")
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 5  # not a blank canvas


def test_analyze_tcn_writes_figures_and_summary(workspace, capsys):
    model = tiny_model()
    data = workspace / "ckpt.pt"
    digest = save_checkpoint(data, model, 42)
    write_checkpoint_bytes(workspace / "best" / "best.pt", data.read_bytes(), digest)  # what the validator keeps
    out = workspace / "analysis"
    code = main(
        ["analyze", "tcn", "--checkpoint", "best", "--out", str(out), "--symbol", "synth", "--samples", "3", "--quiet"]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    for name in ("tcn_kernels.png", "attention_mean.png", "attention_samples.png"):
        assert_informative_png((out / name).read_bytes())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 42 and summary["sha256"] == digest and summary["symbol"] == "SYNTH"
    assert [k["dilation"] for k in summary["kernels"]] == [1, 2, 4]
    attention = summary["attention"]
    assert len(attention["mean_weight_oldest_first"]) == W
    assert sum(attention["mean_weight_oldest_first"]) == pytest.approx(1.0, abs=1e-6)
    assert 0 < attention["entropy_nats"] <= attention["entropy_nats_uniform"] + 1e-9
    assert len(summary["samples"]) == 3
    # The sample numbers are the model's own weights on those windows.
    market_rows = [s["row"] for s in summary["samples"]]
    market = load_market(load_config(None), "SYNTH")
    weights, _ = attention_weights(model, torch.from_numpy(flat_observations(market, np.array(market_rows), W)))
    np.testing.assert_allclose([s["weights_oldest_first"] for s in summary["samples"]], weights.numpy(), atol=1e-6)
    assert f"{attention[f'newest_{NEWEST}_share']:.1%}" in printed and "summary.json" in printed


def test_analyze_q_prints_and_writes_the_q_differences(workspace, capsys):
    path = workspace / "ckpt.pt"
    save_checkpoint(path, tiny_model(), 7)
    out = workspace / "q"
    args = ["analyze", "q", "--checkpoint", str(path), "--symbol", "synth", "--horizon", "10", "--level", "1.2"]
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 7 and summary["horizon"] == 10 and summary["level"] == 1.2
    market = load_market(load_config(None), "SYNTH")
    split = make_splits(len(market), load_config(None).splits, W)["validation"]  # the checkpoint's window
    rows = np.arange(split.first_decision(W) + 1, split.stop - 10)
    assert summary["bars"] == len(rows)
    expected = summarise(
        q_differences(tiny_model(), market, rows, W),
        (market.close[rows + 10] - market.close[rows]) / market.pip,
        (market.close[rows] - 1.2) / market.pip,
    )
    for name in ("open", "hold", "move"):
        assert summary[name] == pytest.approx(expected[name])
    assert f"slope on the gap to 1.2 {summary['open']['slope_on_level_gap']:+.3f}" in printed

    assert main([*args[:-4], "--horizon", "0"]) == 2
    assert "--horizon must be at least 1" in capsys.readouterr().err


def test_missing_or_corrupted_checkpoint_exits_2_without_traceback(workspace, capsys):
    out = workspace / "analysis"
    assert main(["analyze", "tcn", "--checkpoint", "best", "--out", str(out)]) == 2
    assert "no best checkpoint" in capsys.readouterr().err

    path = workspace / "ckpt.pt"
    save_checkpoint(path, tiny_model(), 1)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert main(["analyze", "tcn", "--checkpoint", str(path), "--out", str(out), "--symbol", "synth"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "sha256" in err and "Traceback" not in err
    assert not out.exists()
