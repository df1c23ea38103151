"""`microzero experiment`: the variants really differ as declared, the runner writes a
table with confidence intervals and reuses finished runs, the intervals are right, and
the PPO baseline only ever plays legal actions."""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from shared.cli import main
from shared.config import Config
from shared.data.store import BarStore
from shared.data.synthetic import synthetic_bars
from shared.env import VecTradingEnv
from shared.env.gym import TradingEnv
from shared.experiments import runner
from shared.experiments.jobs import run_all
from shared.experiments.ppo import PPOPolicy, train_ppo
from shared.experiments.runner import greedy_backtest
from shared.experiments.stats import bootstrap_mean_interval, t_interval
from shared.experiments.variants import EXPERIMENTS, SMALL, apply_overrides, variant_config
from shared.market import load_market, market_from_bars
from shared.model.networks import StochasticMuZeroNet
from shared.selfplay import SearchPolicy

BARS = synthetic_bars("sine", 1500, seed=0)
# Small enough that a 20-step run takes about a second. Two simulations: the search runs
# in self-play and in every learner step (the bootstrap values), and it is what these
# tests' time went on; what they check (the runner, the curve, the reuse) needs no more.
TINY = {
    "search": dict(num_simulations=2),
    "model": dict(
        tcn_channels=8, hidden=16, head_hidden=8, encoder_hidden=8, residual_blocks=0, support_bins=21, support_max=30.0
    ),
    "learning": dict(min_replay_positions=100, batch_size=16, samples_per_insert=1),
    "env": dict(episode_length=40),
    "train": dict(num_envs=4),
}


def _variants(name):
    return {v.name: v for v in EXPERIMENTS[name].variants}


def _leaves(d, prefix=()):
    for key, value in d.items():
        if isinstance(value, dict):
            yield from _leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def test_every_variant_changes_exactly_its_declared_fields():
    base = Config()
    base_leaves = dict(_leaves(base.model_dump()))
    for experiment in EXPERIMENTS.values():
        for variant in experiment.variants:
            changed = {k for k, v in _leaves(variant_config(base, variant).model_dump()) if base_leaves[k] != v}
            declared = {k for k, v in _leaves(variant.overrides) if base_leaves[k] != v}
            assert changed == declared, (experiment.name, variant.name)


def test_window_variants_move_model_and_env_together_and_run():
    for bars_in_window in (32, 64, 128):
        cfg = variant_config(Config(), _variants("window")[f"window-{bars_in_window}"], small=True)
        assert cfg.model.window == cfg.env.window == bars_in_window
        market = market_from_bars("SYNTH", BARS, cfg)
        env = TradingEnv(market, market.splits(cfg)["train"], window=cfg.env.window, episode_length=50)
        obs, _ = env.reset(seed=0)
        assert obs.shape == (bars_in_window, 15)
        model = StochasticMuZeroNet(cfg.model).eval()
        with torch.no_grad():
            state, policy, value = model.initial_inference(torch.from_numpy(np.stack([obs, obs])))
        assert state.shape == (2, cfg.model.hidden) and policy.shape == (2, 4)
        # The splits keep a gap of one window, whatever its length.
        splits = market.splits(cfg)
        assert splits["validation"].start - splits["train"].stop == bars_in_window
    with pytest.raises(ValueError, match="must equal env.window"):
        apply_overrides(Config(), {"env": {"window": 32}})


def test_overrides_win_over_environment_variables(monkeypatch):
    monkeypatch.setenv("MZ_ENV__WINDOW", "64")
    monkeypatch.setenv("MZ_MODEL__WINDOW", "64")
    cfg = variant_config(Config(), _variants("window")["window-32"])
    assert cfg.env.window == cfg.model.window == 32


def test_settings_parse_as_json_and_name_their_mistakes():
    from shared.experiments.variants import parse_settings

    parsed = parse_settings(["learning.lr=0.003", "search.root=puct", "features.time_features=false"])
    assert parsed == {"learning": {"lr": 0.003}, "search": {"root": "puct"}, "features": {"time_features": False}}
    config = apply_overrides(apply_overrides(Config(), SMALL), parsed)
    assert config.learning.lr == 0.003 and config.search.root == "puct" and not config.features.time_features
    assert config.learning.samples_per_insert == SMALL["learning"]["samples_per_insert"]  # the rest of the preset
    for bad in ("lr=0.1", "learning.lr", "learning.lr.x=1"):
        with pytest.raises(ValueError, match="section.field=value"):
            parse_settings([bad])
    with pytest.raises(ValueError, match="env has no setting windw"):
        apply_overrides(Config(), parse_settings(["env.windw=32"]))
    with pytest.raises(ValueError, match="lr"):
        apply_overrides(Config(), parse_settings(["learning.lr=-1"]))


def test_time_features_off_zeroes_columns_5_to_8_only():
    on = variant_config(Config(), _variants("time-features")["with-time"])
    off = variant_config(Config(), _variants("time-features")["without-time"])
    market_on, market_off = market_from_bars("SYNTH", BARS, on), market_from_bars("SYNTH", BARS, off)
    assert np.all(market_off.features[:, 5:9] == 0)
    assert np.abs(market_on.features[:, 5:9]).max() > 0.5  # the cycles are really there when on
    np.testing.assert_array_equal(market_off.features[:, :5], market_on.features[:, :5])
    # The observations the agent sees: same shape, time columns constant 0, the rest unchanged.
    obs = {}
    for name, market in (("on", market_on), ("off", market_off)):
        env = VecTradingEnv.for_market(
            market,
            num_envs=3,
            window=64,
            episode_length=10,
        )
        obs[name] = env.reset(starts=np.array([100, 300, 500]))
    assert obs["off"].shape == obs["on"].shape == (3, 64, 15)
    assert np.all(obs["off"][:, :, 5:9] == 0)
    keep = [c for c in range(15) if c not in range(5, 9)]
    np.testing.assert_array_equal(obs["off"][:, :, keep], obs["on"][:, :, keep])


def test_feature_cache_never_serves_the_other_time_variant(tmp_path):
    base = Config(data={"db_path": tmp_path / "bars.duckdb", "cache_dir": tmp_path / "cache"})
    store = BarStore(base.data.db_path)
    store.import_bars("SYNTH", BARS, source="test")
    off = apply_overrides(base, {"features": {"time_features": False}})
    first_off = load_market(off, "SYNTH", store)  # written to the cache first
    on = load_market(base, "SYNTH", store)  # must not be served the zeroed matrix
    again_off = load_market(off, "SYNTH", store)
    assert np.abs(on.features[:, 5:9]).max() > 0.5
    assert np.all(first_off.features[:, 5:9] == 0) and np.all(again_off.features[:, 5:9] == 0)
    assert len(list((tmp_path / "cache" / "features").glob("*.npy"))) == 2


def test_deterministic_variant_has_one_chance_code_and_searches():
    variants = _variants("stochastic")
    det = variant_config(Config(), variants["deterministic-1"], small=True)
    sto = variant_config(Config(), variants["stochastic-16"], small=True)
    assert det.model.chance_codes == det.search.num_chance_codes == 1
    assert sto.model.chance_codes == sto.search.num_chance_codes == 16
    market = market_from_bars("SYNTH", BARS, det)
    env = VecTradingEnv.for_market(
        market,
        num_envs=4,
        window=64,
        episode_length=5,
    )
    obs = env.reset(starts=np.array([100, 200, 300, 400]))
    policy = SearchPolicy(StochasticMuZeroNet(det.model), det.search, "cpu", seed=0)
    actions = policy(env, obs)
    assert env.legal_mask()[np.arange(4), actions].all()
    assert np.isfinite(policy.last.root_value.numpy()).all()


def test_search_variants_set_root_and_simulations():
    got = {
        (v.search.root, v.search.num_simulations)
        for v in (variant_config(Config(), x, small=True) for x in EXPERIMENTS["search"].variants)
    }
    assert got == {(root, sims) for root in ("gumbel", "puct") for sims in (4, 8, 15)}
    # --small's 8 simulations do not override the variant's own count.
    assert SMALL["search"]["num_simulations"] == 8


def test_t_interval_matches_tables():
    ci = t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, n 3: half-width 4.3027 / sqrt(3)
    assert ci.mean == 2.0 and ci.n == 3
    assert ci.high - 2.0 == pytest.approx(4.302653 / 3**0.5, abs=1e-5) and ci.low == pytest.approx(4 - ci.high)
    one = t_interval([5.0, None])  # a run without trades has no expectancy: dropped, no interval from one value
    assert (one.mean, one.low, one.n) == (5.0, None, 1)
    boot = bootstrap_mean_interval(np.arange(100.0))
    assert boot.low < 49.5 < boot.high and boot.high - boot.low == pytest.approx(2 * 1.96 * 29.01 / 10, rel=0.1)
    assert bootstrap_mean_interval(np.arange(100.0)) == boot  # reproducible


def _cli(tmp_path, *args):
    config = {"data": {"db_path": str(tmp_path / "bars.duckdb"), "cache_dir": str(tmp_path / "cache")}, **TINY}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    return main(["--config", str(tmp_path / "config.yaml"), "experiment", *args, "--symbol", "SYNTH", "--quiet"])


@pytest.mark.timeout(120)
def test_runner_writes_a_table_with_intervals_and_reuses_finished_runs(tmp_path, capsys):
    BarStore(tmp_path / "bars.duckdb").import_bars("SYNTH", BARS, source="test")
    out = tmp_path / "exp"
    args = ("stochastic", "--steps", "20", "--seeds", "0,1", "--out", str(out))
    assert _cli(tmp_path, *args) == 0
    report = json.loads((out / "results.json").read_text())
    names = [row["name"] for row in report["rows"]]
    assert names == ["stochastic-16", "deterministic-1", "oracle", "momentum", "range", "hour", "buy_hold", "random"]
    for row in report["rows"][:2]:
        s = row["summary"]
        assert s["runs"] == 2 and {"mean", "low", "high", "n"} <= set(s["total_pips"])
        assert s["total_pips"]["low"] <= s["total_pips"]["mean"] <= s["total_pips"]["high"]
        assert s["pooled_expectancy"]["n"] == sum(r["trades"] for r in row["runs"])
        assert [r["reused"] for r in row["runs"]] == [False, False]
    md = (out / "results.md").read_text()
    assert "microzero" in md and "stochastic-16" in md and md.count("\n| ") == 1 + 8  # header + 8 rows
    pips = {row["name"]: row["summary"]["total_pips"]["mean"] for row in report["rows"]}
    assert pips["oracle"] == max(pips.values()) and pips["oracle"] > pips["range"] > 0  # sine: the range rule earns
    assert (out / "deterministic-1" / "seed1" / "checkpoints").is_dir()

    result_file = out / "stochastic-16" / "seed0" / "result.json"
    stamp = result_file.stat().st_mtime_ns
    assert _cli(tmp_path, *args) == 0
    again = json.loads((out / "results.json").read_text())
    assert all(r["reused"] for row in again["rows"][:2] for r in row["runs"])
    assert result_file.stat().st_mtime_ns == stamp
    assert [row["summary"] for row in again["rows"]] == [row["summary"] for row in report["rows"]]

    # Another experiment reuses identical runs (stochastic-16 = with-time) and trains the rest.
    other = tmp_path / "time"
    assert (
        _cli(
            tmp_path,
            "time-features",
            "--steps",
            "20",
            "--seeds",
            "0,1",
            "--out",
            str(other),
            "--reuse-runs-from",
            str(out),
        )
        == 0
    )
    rows = {row["name"]: row for row in json.loads((other / "results.json").read_text())["rows"]}
    assert all(r["copied_from"] for r in rows["with-time"]["runs"])
    assert rows["with-time"]["summary"] == report["rows"][0]["summary"]
    assert not any(r["copied_from"] for r in rows["without-time"]["runs"])

    # --set reaches the runs' config: a new setting is a new run, refused in this folder.
    assert (
        _cli(tmp_path, "stochastic", "--steps", "20", "--seeds", "0", "--out", str(out), "--set", "learning.lr=0.01")
        == 2
    )
    assert "other settings" in capsys.readouterr().err

    # A different budget in the same folder is refused rather than mixed in.
    assert _cli(tmp_path, "stochastic", "--steps", "21", "--seeds", "0", "--out", str(out)) == 2
    assert "other settings" in capsys.readouterr().err


def _in_worker(x, tmp):
    """run_all's test function: where it ran, on how many threads; "boom" fails, "slow" sleeps."""
    if x == "boom":
        raise ValueError("run boom failed")
    if x == "slow":
        time.sleep(3)
    (Path(tmp) / f"done-{x}").write_text("")
    return x, os.getpid(), torch.get_num_threads()


@pytest.mark.timeout(120)
def test_run_all_runs_calls_in_fresh_processes_on_this_processs_threads(tmp_path):
    threads = torch.get_num_threads()
    ours = 2 if threads == 1 else 1  # not what a fresh process would pick by itself
    torch.set_num_threads(ours)
    try:
        got = dict(run_all(_in_worker, {i: (i, tmp_path) for i in range(3)}, jobs=2))
    finally:
        torch.set_num_threads(threads)
    assert sorted(got) == [0, 1, 2] and [got[i][0] for i in range(3)] == [0, 1, 2]
    pids = {pid for _, pid, _ in got.values()}
    assert os.getpid() not in pids and len(pids) == 3  # a process per run
    assert {n for _, _, n in got.values()} == {ours}
    # A failing run raises its error; the run going beside it finishes; nothing starts after it.
    with pytest.raises(ValueError, match="run boom failed"):
        list(run_all(_in_worker, {x: (x, tmp_path) for x in ("boom", "slow", "late")}, jobs=2))
    assert (tmp_path / "done-slow").exists() and not (tmp_path / "done-late").exists()
    with pytest.raises(ValueError, match="at least 1"):
        list(run_all(_in_worker, {}, jobs=0))


@pytest.mark.timeout(180)
def test_jobs_give_the_same_runs_as_one_after_another(tmp_path, monkeypatch, capsys):
    BarStore(tmp_path / "bars.duckdb").import_bars("SYNTH", BARS, source="test")
    args = ("stochastic", "--steps", "20", "--seeds", "0,1")
    asked = []

    def recording(fn, calls, jobs, **kwargs):
        asked.append((len(calls), jobs))
        return run_all(fn, calls, jobs, **kwargs)

    monkeypatch.setattr(runner, "run_all", recording)
    assert _cli(tmp_path, *args, "--out", str(tmp_path / "one")) == 0
    assert _cli(tmp_path, *args, "--out", str(tmp_path / "two"), "--jobs", "2") == 0
    assert asked == [(4, 1), (4, 2)]
    one, two = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    assert [row["name"] for row in one["rows"]] == [row["name"] for row in two["rows"]]
    for a, b in zip(one["rows"], two["rows"], strict=True):
        untimed = [{k: v for k, v in row["summary"].items() if k != "train_s_per_run"} for row in (a, b)]
        assert untimed[0] == untimed[1], a["name"]
    for variant in ("stochastic-16", "deterministic-1"):
        for seed in (0, 1):
            ran = [
                json.loads((tmp_path / d / variant / f"seed{seed}" / "result.json").read_text()) for d in ("one", "two")
            ]
            assert ran[0]["trade_pips"] == ran[1]["trade_pips"] and ran[0]["metrics"] == ran[1]["metrics"]
    assert "--jobs 2" in two["command"] and "--jobs" not in one["command"]

    # Finished runs are read here, not sent to workers; another setting in the folder is
    # refused before anything trains.
    assert _cli(tmp_path, *args, "--out", str(tmp_path / "two"), "--jobs", "2") == 0
    assert asked[-1] == (0, 2)
    capsys.readouterr()
    lr = ("--set", "learning.lr=0.01")
    assert _cli(tmp_path, *args, "--out", str(tmp_path / "two"), "--jobs", "2", *lr) == 2
    assert "other settings" in capsys.readouterr().err and len(asked) == 3


@pytest.mark.timeout(120)
def test_ppo_policy_plays_only_legal_actions(tmp_path):
    cfg = apply_overrides(Config(), TINY)
    market = market_from_bars("SYNTH", BARS, cfg)
    model = train_ppo(cfg, market, tmp_path, timesteps=256, seed=0)  # one rollout of sb3's 2048 steps
    assert (tmp_path / "ppo.zip").exists() and model.num_timesteps >= 256
    policy, decisions, mapped = PPOPolicy(model), [0], [0]

    def checked(env, obs):
        raw = np.asarray(model.predict(obs, deterministic=True)[0])
        actions = policy(env, obs)
        legal = env.legal_mask()
        raw_legal = legal[np.arange(env.num_envs), raw]
        assert legal[np.arange(env.num_envs), actions].all()
        np.testing.assert_array_equal(actions, np.where(raw_legal, raw, 0))  # illegal -> Hold, else as predicted
        decisions[0] += env.num_envs
        mapped[0] += int((~raw_legal).sum())
        return actions

    result = greedy_backtest(checked, cfg, market)
    assert decisions[0] > 100 and np.isfinite(result.metrics.total_pips)
    assert mapped[0] > 0  # this barely trained agent does propose illegal actions: the mapping was exercised


def test_ppo_experiment_without_sb3_exits_2_with_the_install_hint(tmp_path, monkeypatch, capsys):
    BarStore(tmp_path / "bars.duckdb").import_bars("SYNTH", BARS, source="test")
    monkeypatch.setitem(sys.modules, "stable_baselines3", None)  # makes `import stable_baselines3` fail
    assert _cli(tmp_path, "ppo", "--steps", "20", "--seeds", "0", "--out", str(tmp_path / "ppo")) == 2
    assert "pip install -e '.[baselines]'" in capsys.readouterr().err
    assert not (tmp_path / "ppo" / "muzero").exists()  # refused before any training


def test_a_stored_curve_run_is_reused_only_with_its_own_settings(tmp_path):
    from shared.experiments.curve import run_settings, stored_points

    config = apply_overrides(Config(), SMALL)
    market = market_from_bars("SYNTH", BARS, config)
    more_search = apply_overrides(config, {"search": {"num_simulations": 16}})
    assert run_settings("muzero", more_search, market) != run_settings("muzero", config, market)
    assert run_settings("ppo", more_search, market) == run_settings("ppo", config, market)  # PPO does not search
    other_bars = market_from_bars("SYNTH", synthetic_bars("sine", 1500, seed=1), config)
    assert run_settings("ppo", config, other_bars) != run_settings("ppo", config, market)

    settings = run_settings("muzero", config, market)
    assert stored_points(tmp_path, [100], "validation", settings) is None  # nothing stored yet
    points = [{"env_steps": 100, "total_pips": 5.0, "trades": 1}]
    stored = {"milestones": [100], "split": "validation", "settings": settings, "points": points}
    (tmp_path / "curve.json").write_text(json.dumps(stored))
    assert stored_points(tmp_path, [100], "validation", settings) == points
    assert stored_points(tmp_path, [100, 200], "validation", settings) is None
    assert stored_points(tmp_path, [100], "test", settings) is None
    with pytest.raises(ValueError, match=r"other settings \(search\).*another --out"):
        stored_points(tmp_path, [100], "validation", run_settings("muzero", more_search, market))
    (tmp_path / "curve.json").write_text(json.dumps({k: v for k, v in stored.items() if k != "settings"}))
    with pytest.raises(ValueError, match="other settings"):  # made before settings were recorded
        stored_points(tmp_path, [100], "validation", settings)


def test_curve_agents_are_checked_before_any_training(tmp_path, capsys):
    BarStore(tmp_path / "bars.duckdb").import_bars("SYNTH", BARS, source="test")
    out = tmp_path / "curve"
    with pytest.raises(SystemExit) as exit_info:
        _cli(tmp_path, "ppo", "--curve", "2048", "--agents", "muzero,dqn", "--out", str(out))
    assert exit_info.value.code == 2 and "--agents takes distinct names among muzero,ppo" in capsys.readouterr().err
    assert _cli(tmp_path, "ppo", "--steps", "20", "--agents", "muzero", "--out", str(out)) == 2
    assert "use it with --curve" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ppo_curve_scores_both_agents_at_each_env_step_milestone(tmp_path):
    BarStore(tmp_path / "bars.duckdb").import_bars("SYNTH", BARS, source="test")
    out = tmp_path / "curve"
    # MuZero and PPO train at once, in two processes
    assert _cli(tmp_path, "ppo", "--curve", "2048,4096", "--seeds", "0", "--out", str(out), "--jobs", "2") == 0
    report = json.loads((out / "curve.json").read_text())
    assert report["split"] == "validation" and report["milestones"] == [2048, 4096]
    for agent in ("muzero", "ppo"):
        (points,) = report["runs"][agent]
        assert len(points) == 2
        # each point is taken once the data played by then was learned from: at or just past the milestone
        assert 2048 <= points[0]["env_steps"] < 4096 <= points[1]["env_steps"] < 4096 + 2048
        assert all(np.isfinite(p["total_pips"]) for p in points)
        assert len(report["curves"][agent]) == 2
    muzero = report["runs"]["muzero"][0]
    assert muzero[0]["learner_steps"] < muzero[1]["learner_steps"]
    assert report["baselines"]["perfect foresight"] > report["baselines"]["random legal"]
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "MuZero % of PF" in (out / "curve.md").read_text()
    stamp = (out / "muzero" / "seed0" / "curve.json").stat().st_mtime_ns
    (out / "ppo" / "seed0" / "curve.json").unlink()  # PPO retrains, here in this process: the same points
    assert _cli(tmp_path, "ppo", "--curve", "2048,4096", "--seeds", "0", "--out", str(out)) == 0  # MuZero reused
    assert (out / "muzero" / "seed0" / "curve.json").stat().st_mtime_ns == stamp
    again = json.loads((out / "curve.json").read_text())["runs"]
    strip = lambda points: [{k: v for k, v in p.items() if k != "train_s"} for p in points]  # noqa: E731
    assert strip(again["ppo"][0]) == strip(report["runs"]["ppo"][0])
    # MuZero alone (a setting screened on validation): no PPO in the report, the table or the command
    assert _cli(tmp_path, "ppo", "--curve", "2048,4096", "--seeds", "0", "--out", str(out), "--agents", "muzero") == 0
    alone = json.loads((out / "curve.json").read_text())
    assert list(alone["curves"]) == list(alone["runs"]) == ["muzero"]
    assert alone["runs"]["muzero"] == report["runs"]["muzero"]  # reused, not retrained
    assert "--agents muzero" in alone["command"]
    table = (out / "curve.md").read_text()
    assert "MuZero % of PF" in table and "PPO" not in table
