"""Serving through a real uvicorn server and a real Redis: /v1/act against a direct greedy
search, the batch endpoint, streaming sessions (replayed against the stateless
endpoint, shared by two replicas), and the typed client."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
import torch

from services.api.app import create_app
from shared.actions import Action
from shared.agent import Agent
from shared.client import ApiError, Client
from shared.config import Config
from shared.data.synthetic import synthetic_bars
from shared.evaluation.checkpoints import load_model
from shared.learning.checkpoint import save_checkpoint
from shared.model.networks import StochasticMuZeroNet
from shared.registry import Registry
from shared.serving.decide import decide
from shared.serving.model import load_served_model
from shared.serving.observation import observation_from_bars
from shared.training import greedy_policy
from tests.helpers import LiveServer

pytestmark = pytest.mark.redis

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
TINY_MODEL = {"tcn_channels": 8, "hidden": 32, "head_hidden": 16, "encoder_hidden": 16, "residual_blocks": 1}
NEED = 183


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Direct searches here use one torch thread, as the API's inference thread does
    (create_app's torch_threads=1): a batch's matrix products split across a different
    number of threads sum in another order, and these comparisons are bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def bars_json(bars) -> list[dict]:
    ts = np.datetime_as_string(bars.ts, unit="s")
    return [
        {"ts": f"{t}Z", "open": float(o), "high": float(h), "low": float(lo), "close": float(c)}
        for t, o, h, lo, c in zip(ts, bars.open, bars.high, bars.low, bars.close, strict=True)
    ]


class _Env:
    def __init__(self, legal: np.ndarray, side: int) -> None:
        self.side, self._legal = np.array([side]), legal[None]

    def legal_mask(self) -> np.ndarray:
        return self._legal


@contextlib.contextmanager
def replicas(tmp: Path) -> Iterator[dict]:
    """Two API servers over one registry (one best checkpoint) and one Redis prefix."""
    prefix = f"test-serving-{uuid.uuid4().hex[:10]}"
    config = Config(
        model=TINY_MODEL,
        search={"num_simulations": 3},
        pipeline={
            "database_url": f"sqlite:///{tmp / 'registry.db'}",
            "redis_url": REDIS_URL,
            "best_dir": str(tmp / "best"),
            "checkpoints_dir": str(tmp / "ckpts"),
            "redis_prefix": prefix,
            "validation_queue": prefix + ":validation",
            "api_session_ttl_s": 600,
        },
    )
    torch.manual_seed(5)
    path = tmp / "ckpts" / "ckpt-000000050.pt"
    sha = save_checkpoint(path, StochasticMuZeroNet(config.model), 50)
    registry = Registry(config.pipeline.database_url)
    registry.ensure_run("test", "EURUSD", {})
    checkpoint_id = registry.add_checkpoint("test", 50, str(path), sha)
    registry.set_best(checkpoint_id, str(path))
    r = redis.Redis.from_url(REDIS_URL)
    try:
        with (
            LiveServer(create_app(config, poll_interval_s=60.0, device="cpu")) as one,
            LiveServer(create_app(config, poll_interval_s=60.0, device="cpu")) as two,
        ):
            yield {"one": one, "two": two, "config": config, "path": path, "id": checkpoint_id, "redis": r}
    finally:
        for key in r.scan_iter(match=prefix + ":*"):
            r.delete(key)
        r.close()
        registry.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with replicas(tmp_path_factory.mktemp("serving")) as served:
        yield served


def test_act_equals_a_direct_greedy_search(env):
    """/v1/act's action, policy and value are bit-identical to the evaluation's greedy
    search (training.greedy_policy) of the served checkpoint on the same observation,
    and to the in-process Agent.load("best")."""
    client, config = env["one"], env["config"]
    model, ckpt = load_model(env["path"])
    search = config.search.model_copy(update={"num_chance_codes": ckpt.model_config().chance_codes})
    policy = greedy_policy(model, config.model_copy(update={"search": search}), torch.device("cpu"))
    agent = Agent.load("best", config)
    assert agent.checkpoint.id == env["id"]
    bars = synthetic_bars("sine", NEED + 60, seed=8)
    for side, held in ((0, 0), (1, 40), (-1, 3)):
        body = client.post("/v1/act", json={"bars": bars_json(bars), "position": {"side": side, "bars_held": held}})
        assert body.status_code == 200, body.text
        got = body.json()
        obs = observation_from_bars(bars, side, held, "EURUSD", config)
        action = int(policy(_Env(obs.legal, side), obs.obs[None])[0])
        out = policy.last_output()
        target = np.where(obs.legal, out.policy_target.double().numpy()[0], 0.0)
        target = target / target.sum()
        assert got["action_index"] == action and got["action"] == Action(action).name
        assert got["value_pips"] == float(out.root_value.double()[0])
        assert list(got["policy"].values()) == target.tolist()
        assert got["checkpoint_id"] == env["id"] and got["model_step"] == 50
        mine = agent.act(bars, (side, held))
        assert (int(mine.action), mine.value, mine.policy.tolist()) == (action, got["value_pips"], target.tolist())


def test_batch_is_one_search_equal_to_single_requests(env):
    client, config = env["one"], env["config"]
    states = [
        (synthetic_bars("sine", NEED + 10, seed=1), 0, 0, "EURUSD"),
        (synthetic_bars("regime", NEED + 30, seed=2), 1, 20, "GBPUSD"),
        (synthetic_bars("mean_reverting", NEED, seed=3), -1, 7, "EURUSD"),
    ]
    items = [{"bars": bars_json(b), "position": {"side": s, "bars_held": h}, "symbol": sym} for b, s, h, sym in states]
    response = client.post("/v1/act/batch", json={"items": items})
    assert response.status_code == 200, response.text
    batch = response.json()["items"]
    # Bit-identical to one batched search of the same observations ...
    served = load_served_model(env["path"], env["id"], config, "cpu")
    direct = decide(served, [observation_from_bars(b, s, h, sym, config) for b, s, h, sym in states])
    for got, want in zip(batch, direct, strict=True):
        assert (got["action_index"], got["value_pips"]) == (int(want.action), want.value)
        assert list(got["policy"].values()) == want.policy.tolist()
    # ... and equal to single requests up to float32 rounding: a matrix product of B rows
    # is not bitwise the same as B products of one row (MKL), so only the bits may differ.
    for got, item in zip(batch, items, strict=True):
        single = client.post("/v1/act", json=item).json()
        assert got["action"] == single["action"] and got["legal_actions"] == single["legal_actions"]
        assert got["value_pips"] == pytest.approx(single["value_pips"], rel=1e-5, abs=1e-5)
        assert got["policy"] == pytest.approx(single["policy"], abs=1e-5)
    bad = [items[0], {**items[1], "bars": items[1]["bars"][:50]}]
    refused = client.post("/v1/act/batch", json={"items": bad})
    assert refused.status_code == 422 and refused.json()["message"].startswith("items[1].bars: 50 bars sent")
    assert client.post("/v1/act/batch", json={"items": []}).status_code == 422


def test_a_session_answers_like_the_stateless_endpoint(env):
    """A bot replays a series both ways: one bar at a time through a session (alternating
    between two API replicas, the fills reported), and the whole series with the position
    it tracks itself through /v1/act. The answers are identical."""
    one, two = env["one"], env["two"]
    bars = synthetic_bars("sine", NEED + 70, seed=11)  # crosses a weekend
    created = one.post("/v1/sessions", json={"bars": bars_json(bars.slice(0, NEED)), "symbol": "eurusd"})
    assert created.status_code == 201, created.text
    session = created.json()
    sid, answer = session["session_id"], session["decision"]
    assert session["bar_seconds"] == 3600 and session["bars_kept"] == NEED and session["expires_in_s"] == 600
    side, held, trades, n = 0, 0, 0, NEED
    while n < len(bars):
        step = 2 if n % 9 == 0 else 1  # now and then two bars in one post
        stateless = one.post(
            "/v1/act",
            json={"bars": bars_json(bars.slice(0, n)), "position": {"side": side, "bars_held": held}},
        ).json()
        assert answer == stateless, n
        filled = answer["action"]  # the bot executes every decision at the newest bar's close
        after = {"BUY": 1, "SELL": -1, "CLOSE": 0}.get(filled, side)
        held = 0 if after != side else held
        side = after
        trades += filled in ("BUY", "SELL")
        new = bars.slice(n, min(n + step, len(bars)))
        n += len(new)
        held = held + len(new) if side else 0
        replica = two if n % 2 else one
        pushed = replica.post(f"/v1/sessions/{sid}/bars", json={"bars": bars_json(new), "filled": filled})
        assert pushed.status_code == 200, pushed.text
        state = pushed.json()
        assert state["position"] == {"side": side, "bars_held": held}
        answer = state["decision"]
    assert trades > 0  # the replay exercised fills
    stored = json.loads(env["redis"].get(f"{env['config'].pipeline.redis_prefix}:session:{sid}"))
    assert (
        stored["ts"][-1] == int(bars.ts[-1].astype(np.int64))
        and 0 < env["redis"].ttl(f"{env['config'].pipeline.redis_prefix}:session:{sid}") <= 600
    )


def test_session_conflicts_are_clear(env):
    client = env["one"]
    bars = synthetic_bars("sine", NEED + 10, seed=12)
    sid = client.post("/v1/sessions", json={"bars": bars_json(bars.slice(0, NEED))}).json()["session_id"]
    url = f"/v1/sessions/{sid}/bars"
    newest = f"{np.datetime_as_string(bars.ts[NEED - 1], unit='us')}Z"

    def post(index: slice, **extra):
        return client.post(url, json={"bars": bars_json(bars)[index], **extra})

    duplicate = post(slice(NEED - 1, NEED))
    assert duplicate.status_code == 409 and "duplicates" in duplicate.json()["detail"]
    assert duplicate.json()["newest_ts"] == newest
    assert post(slice(NEED - 5, NEED - 4)).status_code == 409
    gap = post(slice(NEED + 1, NEED + 2))
    assert gap.status_code == 409 and "missing" in gap.json()["detail"]
    assert gap.json()["expected_ts"] == f"{np.datetime_as_string(bars.ts[NEED], unit='us')}Z"
    illegal = post(slice(NEED, NEED + 1), filled="CLOSE")
    assert illegal.status_code == 409 and "CLOSE is not possible while flat" in illegal.json()["detail"]
    both = post(slice(NEED, NEED + 1), filled="BUY", position={"side": 1, "bars_held": 1})
    assert both.status_code == 422 and "not both" in both.json()["message"]
    first = post(slice(NEED, NEED + 1), filled="BUY")
    assert first.status_code == 200 and first.json()["position"] == {"side": 1, "bars_held": 1}
    assert post(slice(NEED, NEED + 1), filled="BUY").json() == first.json()  # a retry: the stored answer
    override = post(slice(NEED + 1, NEED + 2), position={"side": -1, "bars_held": 4})
    assert override.status_code == 200 and override.json()["position"] == {"side": -1, "bars_held": 4}
    assert client.get(f"/v1/sessions/{sid}").json()["decision"] == override.json()["decision"]
    assert client.delete(f"/v1/sessions/{sid}").status_code == 204
    assert post(slice(NEED + 2, NEED + 3)).status_code == 404
    assert client.post("/v1/sessions/no%20such/bars", json={"bars": bars_json(bars)[:1]}).status_code == 422
    short = client.post("/v1/sessions", json={"bars": bars_json(bars)[:100]})
    assert short.status_code == 422 and "bars: 100 bars sent" in short.json()["message"]


def test_the_typed_client(env):
    """shared.client speaks the same models; DataFrames go in, typed answers come out."""
    import pandas as pd

    bars = synthetic_bars("sine", NEED + 3, seed=13)
    df = pd.DataFrame(
        {"open": bars.open, "high": bars.high, "low": bars.low, "close": bars.close}, index=pd.DatetimeIndex(bars.ts)
    )
    with Client(http=httpx.Client(base_url=str(env["one"].base_url), timeout=30)) as api:
        answer = api.act(df.iloc[:NEED], position=(1, 12), symbol="EURUSD")
        raw = env["one"].post(
            "/v1/act", json={"bars": bars_json(bars.slice(0, NEED)), "position": {"side": 1, "bars_held": 12}}
        )
        assert answer.model_dump() == raw.json()
        assert [a.action for a in api.act_batch([(df.iloc[:NEED], (1, 12))])] == [answer.action]
        session = api.open_session(df.iloc[:NEED], position=(1, 12))
        assert session.decision == answer
        nxt = session.push(df.iloc[NEED : NEED + 1], filled="HOLD")
        assert session.state.position.bars_held == 13 and nxt.checkpoint_id == env["id"]
        assert api.session(session.id).decision == nxt
        with pytest.raises(ApiError) as err:
            session.push(df.iloc[NEED : NEED + 1])
        assert err.value.status == 409 and "duplicates" in err.value.message
        session.close()
        with pytest.raises(ApiError) as err:
            api.act(df.iloc[:50])
        assert err.value.status == 422 and "at least 183" in err.value.message


def test_racing_writes_to_one_session_cannot_both_win(env):
    from dataclasses import replace

    from shared.serving.session import open_session
    from shared.serving.session_store import SessionChanged, SessionStore

    store = SessionStore(env["redis"], env["config"].pipeline.redis_prefix + ":session:", 60)
    session = open_session(uuid.uuid4().hex, "EURUSD", synthetic_bars("sine", NEED, seed=1), 0, 0, NEED)
    store.create(session)
    with pytest.raises(SessionChanged):
        store.create(session)
    store.replace(0, replace(session, version=1))
    with pytest.raises(SessionChanged):  # the second writer read version 0 too
        store.replace(0, replace(session, version=1, side=1, bars_held=1))
    assert store.get(session.id).version == 1 and store.get(session.id).side == 0 and 0 < store.ttl(session.id) <= 60
    assert store.delete(session.id) and store.get(session.id) is None
