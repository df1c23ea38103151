"""The library's serving face: bars from DataFrames, the Agent, and the session rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from shared.actions import Action
from shared.agent import Agent
from shared.config import Config
from shared.data.synthetic import synthetic_bars
from shared.learning.checkpoint import CheckpointError, save_checkpoint
from shared.model.networks import StochasticMuZeroNet
from shared.registry import Registry
from shared.serving.frames import to_bars
from shared.serving.observation import ObservationError, bars_needed, observation_from_bars
from shared.serving.session import SessionConflict, SessionState, advance, open_session
from shared.training import greedy_policy

TINY_MODEL = {"tcn_channels": 8, "hidden": 32, "head_hidden": 16, "encoder_hidden": 16, "residual_blocks": 1}


def tiny_config(tmp: Path) -> Config:
    return Config(
        model=TINY_MODEL,
        search={"num_simulations": 2},
        pipeline={
            "database_url": f"sqlite:///{tmp / 'registry.db'}",
            "best_dir": str(tmp / "best"),
            "checkpoints_dir": str(tmp),  # where the tests write the trainer's originals
        },
    )


def tiny_checkpoint(path: Path, config: Config, seed: int = 0) -> str:
    torch.manual_seed(seed)
    return save_checkpoint(path, StochasticMuZeroNet(config.model), 7)


def frame(bars, *, tz: str | None = None, capitalised: bool = True) -> pd.DataFrame:
    index = pd.DatetimeIndex(bars.ts)
    if tz:
        index = index.tz_localize("UTC").tz_convert(tz)
    names = ("Open", "High", "Low", "Close") if capitalised else ("open", "high", "low", "close")
    return pd.DataFrame(dict(zip(names, (bars.open, bars.high, bars.low, bars.close), strict=True)), index=index)


class _Env:
    """What SearchPolicy reads from an environment: the legal mask and the side."""

    def __init__(self, legal: np.ndarray, side: int) -> None:
        self.side, self._legal = np.array([side]), legal[None]

    def legal_mask(self) -> np.ndarray:
        return self._legal


def test_dataframes_become_the_same_bars():
    bars = synthetic_bars("sine", 300, seed=4)
    for df in (frame(bars), frame(bars, tz="America/New_York", capitalised=False)):
        got = to_bars(df)
        assert (got.ts == bars.ts).all() and (got.close == bars.close).all() and (got.high == bars.high).all()
    with_column = frame(bars).reset_index(names="Time")
    assert (to_bars(with_column).ts == bars.ts).all()
    bad = frame(bars)
    bad.iloc[5, 1] = bad.iloc[5, 2] - 0.01  # high < low
    with pytest.raises(ObservationError) as err:
        to_bars(bad)
    assert err.value.loc == ("bars", 5, "high")
    with pytest.raises(ObservationError, match="timestamps must increase"):
        to_bars(frame(bars).iloc[[0, 2, 1, 3]])
    with pytest.raises(ObservationError, match="lacks column"):
        to_bars(frame(bars).drop(columns="Close"))


def test_agent_acts_like_the_validators_greedy_search(tmp_path):
    """Agent.act = the evaluation's greedy search (training.greedy_policy) on the same observation."""
    config = tiny_config(tmp_path)
    path = tmp_path / "ckpt-000000007.pt"
    tiny_checkpoint(path, config)
    agent = Agent.load(path, config)
    assert agent.checkpoint.id is None and agent.checkpoint.step == 7 and agent.bars_needed == 183
    bars = synthetic_bars("sine", 260, seed=1)
    model = StochasticMuZeroNet(config.model)
    model.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
    search_config = config.model_copy(update={"search": config.search.model_copy(update={"num_chance_codes": 16})})
    policy = greedy_policy(model.eval(), search_config, torch.device("cpu"))
    for side, held in ((0, 0), (1, 30), (-1, 5)):
        decision = agent.act(frame(bars), (side, held))
        obs = observation_from_bars(bars, side, held, "EURUSD", config)
        action = policy(_Env(obs.legal, side), obs.obs[None])
        out = policy.last_output()
        expected = np.where(obs.legal, out.policy_target.double().numpy()[0], 0.0)
        assert decision.action == int(action[0])
        assert decision.value == float(out.root_value.double()[0])
        assert (decision.policy == expected / expected.sum()).all()
        assert decision.legal_actions == [Action(i) for i in range(4) if obs.legal[i]]
    many = agent.act_many([(frame(bars), None), (bars, (1, 30), "EURUSD")])
    assert [d.action for d in many] == [agent.act(bars).action, agent.act(bars, (1, 30)).action]
    with pytest.raises(ObservationError, match="at least 183"):
        agent.act(frame(bars).iloc[:100])


def test_agent_loads_the_best(tmp_path):
    config = tiny_config(tmp_path)
    with pytest.raises(CheckpointError, match="no best checkpoint"):
        Agent.load("best", config)
    best = Path(config.pipeline.best_dir) / "best.pt"
    sha = tiny_checkpoint(best, config)
    assert Agent.load("best", config).checkpoint.sha256 == sha  # the folder alone: no registry file yet
    registry = Registry(config.pipeline.database_url)
    registry.ensure_run("r", "EURUSD", {})
    original = tmp_path / "ckpt-000000007.pt"
    tiny_checkpoint(original, config)
    checkpoint_id = registry.add_checkpoint("r", 7, str(original), sha)
    registry.set_best(checkpoint_id, str(best))
    registry.close()
    agent = Agent.load("best", config)
    assert agent.checkpoint.id == checkpoint_id and agent.checkpoint.path == best
    best.write_bytes(best.read_bytes()[:-10])  # corrupt copy: the registered original is used
    assert Agent.load("best", config).checkpoint.path == original
    original.write_bytes(original.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        Agent.load("best", config)


# ----------------------------------------------------------------------------- session rules


def _session(n: int = 200) -> tuple[SessionState, object]:
    bars = synthetic_bars("sine", 400, seed=2)  # H1 bars, weekends skipped (120 a week)
    return open_session("s", "EURUSD", bars.slice(0, n), 0, 0, need=183), bars


def test_session_keeps_what_the_answer_depends_on():
    session, bars = _session()
    assert session.bar_seconds == 3600 and len(session.ts) == 183
    assert SessionState.from_json(session.to_json()) == session  # JSON, exactly
    assert json.loads(session.to_json())["close"][-1] == float(bars.close[199])
    # Buy filled at bar 199's close; bars 200..209 arrive one by one: held = bars since the fill.
    session = advance(session, bars.slice(200, 201), 183, filled=Action.BUY)
    assert (session.side, session.bars_held) == (1, 1)
    for i in range(201, 310):
        session = advance(session, bars.slice(i, i + 1), 183)
    assert session.bars_held == 110 and len(session.ts) == 183
    session = advance(session, bars.slice(310, 312), 183, filled=Action.SELL)  # a reversal, two bars at once
    assert (session.side, session.bars_held) == (-1, 2)
    session = advance(session, bars.slice(312, 313), 183, filled=Action.CLOSE)
    assert (session.side, session.bars_held, session.version) == (0, 0, 112)
    # The observation from the kept bars is the one from the whole series.
    for side, held in ((1, 150), (0, 0)):
        kept = advance(session, bars.slice(313, 314), 183, position=(side, held))
        whole = observation_from_bars(bars.slice(0, 314), side, held, "EURUSD", Config())
        assert len(kept.ts) == max(183, held + 1)
        got = observation_from_bars(kept.bars(), kept.side, kept.bars_held, "EURUSD", Config())
        assert (got.obs == whole.obs).all()
    assert bars_needed(Config()) == 183


def test_session_refuses_bars_that_do_not_continue_it():
    session, bars = _session()
    newest = bars.ts[199]
    for i, what in ((199, "duplicates"), (150, "older")):
        with pytest.raises(SessionConflict, match=what) as err:
            advance(session, bars.slice(i, i + 2), 183)
        assert err.value.newest_ts == newest
    with pytest.raises(SessionConflict, match="missing") as err:
        advance(session, bars.slice(201, 202), 183)
    assert err.value.expected_ts == bars.ts[200]
    assert advance(session, bars.slice(201, 202), 183, accept_gap=True).newest_ts == bars.ts[201]
    # The weekend is no gap: bar 239 is Friday 21:00, bar 240 Sunday 22:00.
    weekend = open_session("w", "EURUSD", bars.slice(0, 240), 0, 0, need=183)
    assert (bars.ts[240] - bars.ts[239]) == np.timedelta64(49, "h")
    assert advance(weekend, bars.slice(240, 241), 183).newest_ts == bars.ts[240]
    with pytest.raises(SessionConflict, match="CLOSE is not possible while flat"):
        advance(session, bars.slice(200, 201), 183, filled=Action.CLOSE)
