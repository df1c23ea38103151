"""`microzero evaluate`: verdict and bootstrap, split isolation, the report end to end."""

from __future__ import annotations

import base64
import csv
import json
import re
import struct
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import image as mpimg

from shared.backtest import backtest
from shared.baselines import Momentum
from shared.cli import main
from shared.config import Config, SearchConfig, SplitConfig
from shared.data.store import BarStore
from shared.data.synthetic import synthetic_bars
from shared.env import VecTradingEnv
from shared.evaluation.run import evaluate_split
from shared.evaluation.stats import (
    NEGATIVE,
    NO_EVIDENCE,
    POSITIVE,
    TOO_FEW,
    bootstrap_mean_ci,
    verdict,
)
from shared.learning.checkpoint import save_checkpoint, write_checkpoint_bytes
from shared.market import restrict_to_split
from shared.model import ModelConfig, StochasticMuZeroNet
from shared.registry import Registry
from shared.splits import Split, make_splits
from shared.training import greedy_policy
from tests.helpers import random_walk_market

pytestmark = pytest.mark.usefixtures("one_torch_thread")

W = 16  # a short window and a tiny network keep the search fast
TINY = ModelConfig(
    window=W,
    tcn_channels=8,
    tcn_dilations=(1, 2),
    hidden=32,
    residual_blocks=1,
    head_hidden=16,
    encoder_hidden=16,
    dropout=0.0,
    chance_codes=8,  # not the config's 16: evaluate must adapt
)
BASELINE_NAMES = ("flat", "buy_hold", "random", "momentum", "range", "hour", "oracle")
SECTIONS = (
    "Verdict",
    "Expectancy confidence interval",
    "Equity curve",
    "Drawdown",
    "Trade P&amp;L histogram",
    "Action frequencies",
    "Metric table",
    "Number of trials (n_trials)",
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tiny_model(seed: int = 0) -> StochasticMuZeroNet:
    torch.manual_seed(seed)
    return StochasticMuZeroNet(TINY).eval()


# ----------------------------------------------------------------------------- statistics


def test_verdict_reads_the_interval():
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 20, 150)
    zero_mean = np.concatenate([noise, -noise])  # mean exactly 0, same spread
    assert verdict(bootstrap_mean_ci(zero_mean + 8.0)) == POSITIVE
    assert verdict(bootstrap_mean_ci(zero_mean)) == NO_EVIDENCE
    assert verdict(bootstrap_mean_ci(zero_mean - 8.0)) == NEGATIVE
    # Nine huge winners are still too few to judge; no trades at all, likewise.
    assert verdict(bootstrap_mean_ci(np.full(9, 50.0) + rng.normal(0, 1, 9))) == TOO_FEW
    empty = bootstrap_mean_ci([])
    assert verdict(empty) == TOO_FEW and empty.as_dict()["low"] is None


def test_bootstrap_interval_covers_the_true_mean_and_is_seeded():
    rng = np.random.default_rng(7)
    true_mean, n = 2.0, 80
    samples = rng.exponential(true_mean, size=(200, n))  # skewed, like trade P&L
    intervals = [bootstrap_mean_ci(s, resamples=2000, seed=k) for k, s in enumerate(samples)]
    coverage = np.mean([ci.low <= true_mean <= ci.high for ci in intervals])
    assert 0.88 <= coverage <= 0.99, coverage  # nominal 95%: neither too narrow nor trivially wide
    # Width close to the normal approximation 2 x 1.96 s / sqrt(n).
    ci, s = intervals[0], samples[0]
    assert ci.low < s.mean() < ci.high
    assert (ci.high - ci.low) == pytest.approx(2 * 1.96 * s.std(ddof=1) / np.sqrt(n), rel=0.2)
    assert bootstrap_mean_ci(s, seed=3) == bootstrap_mean_ci(s, seed=3)
    assert bootstrap_mean_ci(s, seed=3) != bootstrap_mean_ci(s, seed=4)
    with pytest.raises(ValueError):
        bootstrap_mean_ci([1.0, float("nan")])


# ----------------------------------------------------------------------------- isolation


@pytest.fixture(scope="module")
def market():
    return random_walk_market(1500, seed=3)


@pytest.fixture(scope="module")
def split(market):
    return make_splits(len(market), SplitConfig(), W)["test"]


def blank_outside(market, split):
    """The market with every feature and close outside `split` replaced by NaN."""
    outside = np.ones(len(market), dtype=bool)
    outside[split.start : split.stop] = False
    features, close = market.features.copy(), market.close.copy()
    features[outside], close[outside] = np.nan, np.nan
    return type(market)(**{**market.__dict__, "features": features, "close": close})


def test_restrict_to_split_keeps_only_the_split_rows(market, split):
    local, local_split = restrict_to_split(market, split)
    assert local_split == Split("test", 0, len(split))
    assert len(local) == len(split)
    np.testing.assert_array_equal(local.features, market.features[split.start : split.stop])
    np.testing.assert_array_equal(local.close, market.close[split.start : split.stop])
    np.testing.assert_array_equal(local.ts, market.ts[split.start : split.stop])
    assert local.bar_offset == market.bar_offset + split.start
    assert not local.close.flags.writeable  # nobody can write bars back into it
    assert local_split.decisions(W) == split.decisions(W)
    with pytest.raises(ValueError, match="outside"):
        restrict_to_split(market, Split("test", split.start, len(market) + 1))


def test_evaluation_never_reads_bars_outside_the_split(market, split):
    blank = blank_outside(market, split)
    config = Config(search=SearchConfig(num_simulations=4, num_chance_codes=8))
    run = dict(window=W, drawdown_penalty=0.01, chunks=8, seed=5, n_trials=4)
    # Model seed 1 trades often here (seed 0 happens to always hold), so the comparison bites.
    original = evaluate_split(market, split, greedy_policy(tiny_model(1), config, "cpu"), **run)
    isolated = evaluate_split(blank, split, greedy_policy(tiny_model(1), config, "cpu"), **run)
    assert list(original.results) == ["agent", *BASELINE_NAMES]
    for name, result in original.results.items():
        other = isolated.results[name]
        np.testing.assert_array_equal(result.bar_pnl, other.bar_pnl, err_msg=name)
        np.testing.assert_array_equal(result.actions, other.actions, err_msg=name)
        np.testing.assert_array_equal(result.trades.net_pips, other.trades.net_pips, err_msg=name)
        assert result.metrics.as_dict() == other.metrics.as_dict(), name
    assert original.results["agent"].metrics.n_trials == 4
    assert original.results["agent"].metrics.trades > 0  # the agent really traded on these bars

    # The NaN bars are not inert: whatever reads them changes. The env's first decision
    # one bar earlier sees a NaN observation, and without restriction the momentum rule
    # (60 bars back, beyond the 16-bar window) reads them and trades differently.
    env = VecTradingEnv(blank.features, blank.close, num_envs=1, pip=blank.pip, spread_pips=1.0, window=W)
    assert np.isnan(env.reset(starts=[split.first_decision(W) - 1], lengths=[5])).any()
    with np.errstate(invalid="ignore"):
        assert (
            backtest(market, split, Momentum(), window=W, chunks=3).metrics.as_dict()
            != backtest(blank, split, Momentum(), window=W, chunks=3).metrics.as_dict()
        )


# ----------------------------------------------------------------------------- end to end


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """Bars of SYNTH in a temp store and every service path under tmp_path."""
    monkeypatch.delenv("MZ_CONFIG", raising=False)
    monkeypatch.setenv("MZ_DATA__DB_PATH", str(tmp_path / "bars.duckdb"))
    monkeypatch.setenv("MZ_DATA__CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MZ_PIPELINE__DATABASE_URL", f"sqlite:///{tmp_path / 'registry.db'}")
    monkeypatch.setenv("MZ_PIPELINE__BEST_DIR", str(tmp_path / "best"))
    monkeypatch.setenv("MZ_SEARCH__NUM_SIMULATIONS", "4")
    BarStore(tmp_path / "bars.duckdb").import_bars("SYNTH", synthetic_bars("sine", 1500, seed=2), source="test")
    return tmp_path


def save_run(folder: Path, steps=(1000, 2000, 3000)) -> list[tuple[Path, str]]:
    """Checkpoints of tiny untrained networks; returns (path, sha256) of each."""
    return [
        (path := folder / f"ckpt-{step:09d}.pt", save_checkpoint(path, tiny_model(k), step))
        for k, step in enumerate(steps)
    ]


def png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == PNG_SIGNATURE and png[12:16] == b"IHDR"
    return struct.unpack(">II", png[16:24])


def assert_informative_png(png: bytes) -> None:
    width, height = png_size(png)
    assert width > 100 and height > 100
    pixels = mpimg.imread(BytesIO(png), format="png")
    colours = np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)
    assert len(colours) > 5  # axes, lines, text: not a blank image


def test_report_end_to_end(workspace, capsys):
    checkpoint, _ = save_run(workspace / "run")[-1]
    out = workspace / "report"
    code = main(
        [
            "evaluate",
            "--checkpoint",
            str(checkpoint),
            "--symbol",
            "synth",
            "--report",
            str(out),
            "--chunks",
            "4",
            "--resamples",
            "2000",
            "--quiet",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert "verdict:" in printed and "momentum" in printed and "oracle (reference)" in printed

    html = (out / "report.html").read_text()
    for heading in SECTIONS:
        assert f">{heading}</h2>" in html, heading
    table = html[html.index(">Metric table</h2>") :]
    for name in ("agent", "flat", "buy_hold", "random", "momentum", "oracle (reference)"):
        assert f"<th>{name}</th>" in table, name
    # Self-contained: no external resource of any kind.
    assert not re.search(r"https?://|<link|<script|src=\"(?!data:)", html)
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 4
    for encoded in images:
        assert_informative_png(base64.b64decode(encoded, validate=True))
    for name in ("equity", "drawdown", "trade_histogram", "actions"):
        png = (out / f"{name}.png").read_bytes()
        assert_informative_png(png)
        assert base64.b64encode(png).decode() in images  # the file is the embedded image

    report = json.loads((out / "metrics.json").read_text())
    agent = report["policies"]["agent"]
    assert set(report["policies"]) == {"agent", *BASELINE_NAMES}
    assert report["n_trials"] == {"value": 3, "source": "checkpoint folder", "detail": report["n_trials"]["detail"]}
    assert agent["n_trials"] == 3 and report["policies"]["random"]["n_trials"] == 1
    assert report["checkpoint"]["path"] == str(checkpoint) and len(report["checkpoint"]["sha256"]) == 64
    assert report["split"]["name"] == "test" and report["split"]["decisions"] == agent["bars"]
    assert report["verdict"] in html and report["verdict"] in printed

    with (out / "trades.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert agent["trades"] == len(rows) == report["expectancy_ci"]["trades"] > 0
    assert sum(float(r["net_pips"]) for r in rows) == pytest.approx(agent["total_pips"], abs=1e-3 * len(rows))
    first, last = report["split"]["stored_bars"]
    for r in rows:
        assert first <= int(r["entry_bar"]) <= int(r["exit_bar"]) < last  # inside the split
        assert int(r["bars_held"]) == int(r["exit_bar"]) - int(r["entry_bar"])
        assert r["side"] in ("long", "short") and r["entry_time"] <= r["exit_time"]


def test_best_checkpoint_takes_n_trials_and_symbol_from_the_registry(workspace, capsys):
    run = save_run(workspace / "checkpoints" / "r1", steps=(1, 2, 3, 4, 5))
    registry = Registry(f"sqlite:///{workspace / 'registry.db'}")
    registry.ensure_run("r1", "SYNTH", {})
    ids = [registry.add_checkpoint("r1", step, str(path), sha) for step, (path, sha) in enumerate(run, 1)]
    best = workspace / "best" / "best.pt"
    path, sha = run[1]
    write_checkpoint_bytes(best, path.read_bytes(), sha)  # what the validator's update_best does
    registry.set_best(ids[1], str(best))
    registry.close()

    out = workspace / "report"
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                "best",
                "--split",
                "validation",
                "--report",
                str(out),
                "--chunks",
                "8",
                "--resamples",
                "500",
                "--quiet",
            ]
        )
        == 0
    )
    report = json.loads((out / "metrics.json").read_text())
    assert report["symbol"] == "SYNTH"  # from the run's record, not the config default (EURUSD)
    assert report["n_trials"]["value"] == 5 and report["n_trials"]["source"] == "registry"
    assert report["policies"]["agent"]["n_trials"] == 5
    assert report["checkpoint"] == {"path": str(best), "sha256": sha, "step": 2}
    assert report["split"]["name"] == "validation"
    assert "from the registry" in (out / "report.html").read_text()


def test_missing_or_damaged_checkpoint_is_a_clear_error(workspace, capsys):
    missing = workspace / "nowhere" / "ckpt-000000001.pt"
    assert main(["evaluate", "--checkpoint", str(missing), "--report", str(workspace / "r")]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "does not exist" in err and "Traceback" not in err

    damaged, _ = save_run(workspace / "run", steps=(7,))[0]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    assert main(["evaluate", "--checkpoint", str(damaged), "--report", str(workspace / "r")]) == 2
    err = capsys.readouterr().err
    assert str(damaged) in err and "sha256" in err

    assert main(["evaluate", "--checkpoint", "best", "--report", str(workspace / "r")]) == 2
    err = capsys.readouterr().err
    assert str(workspace / "best" / "best.pt") in err and "no best checkpoint" in err
    assert not (workspace / "r").exists()  # nothing written on failure


def test_evaluation_rebuilds_the_features_the_checkpoint_was_trained_on(tmp_path, capsys):
    """A checkpoint trained without the time features is evaluated without them."""
    from shared.config import FeatureConfig
    from shared.evaluation.checkpoints import with_checkpoint_features
    from shared.learning.checkpoint import load_checkpoint
    from shared.market import market_from_bars

    model = StochasticMuZeroNet(ModelConfig(window=16, tcn_channels=4, hidden=16, head_hidden=8, encoder_hidden=8))
    trained_on = FeatureConfig(time_features=False)
    save_checkpoint(tmp_path / "ckpt.pt", model, 3, features_config=trained_on)
    ckpt = load_checkpoint(tmp_path / "ckpt.pt")
    assert ckpt.features_config() == trained_on

    config = with_checkpoint_features(Config(), ckpt)
    assert config.features == trained_on and "time_features" in capsys.readouterr().err
    market = market_from_bars("SYNTH", synthetic_bars("sine", 400, seed=0), config)
    assert not market.features[:, 5:9].any() and market.features[:, :5].any()

    save_checkpoint(tmp_path / "old.pt", model, 3)  # older checkpoints record no feature settings
    assert with_checkpoint_features(config, load_checkpoint(tmp_path / "old.pt")) is config
