"""The HTTP API through a real uvicorn server, a real Redis and a SQLite registry.

One tiny real checkpoint model (2 simulations) keeps the whole file fast. Redis keys,
the pub/sub channel and the RQ queue carry a unique prefix and are deleted afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
import torch
from rq import Queue

from services.api.app import create_app
from shared.actions import Action
from shared.bench_api import bench_act, sample_act_payload
from shared.config import Config
from shared.data.synthetic import synthetic_bars
from shared.env import VecTradingEnv
from shared.learning.checkpoint import load_checkpoint, save_checkpoint
from shared.market import market_from_bars
from shared.model.networks import StochasticMuZeroNet
from shared.registry import Registry
from shared.serving.observation import observation_from_bars
from shared.transport.keys import RedisKeys
from tests.helpers import LiveServer, wait_for

pytestmark = pytest.mark.redis

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
TOKEN = "test-token-0123"
TINY_MODEL = {"tcn_channels": 8, "hidden": 32, "head_hidden": 16, "encoder_hidden": 16, "residual_blocks": 1}
NEED = 119 + 64  # warm-up of the features (2L-1) + window


# ----------------------------------------------------------------------------- helpers


def bars_json(bars) -> list[dict]:
    ts = np.datetime_as_string(bars.ts, unit="s")
    return [
        {"ts": f"{t}Z", "open": float(o), "high": float(h), "low": float(lo), "close": float(c)}
        for t, o, h, lo, c in zip(ts, bars.open, bars.high, bars.low, bars.close)
    ]


def make_config(tmp: Path, name: str, **pipeline) -> Config:
    return Config(
        model=TINY_MODEL,
        search={"num_simulations": 2},
        pipeline={
            "database_url": f"sqlite:///{tmp / f'{name}.db'}",
            "redis_url": REDIS_URL,
            "best_dir": str(tmp / f"{name}-best"),
            "checkpoints_dir": str(tmp / "ckpts"),  # where save_tiny writes: the API loads only from here and best_dir
            "api_status_refresh_s": 0.2,
            **pipeline,
        },
    )


def save_tiny(tmp: Path, step: int, config: Config) -> tuple[str, str]:
    torch.manual_seed(step)
    path = tmp / "ckpts" / f"ckpt-{step:09d}.pt"
    sha = save_checkpoint(path, StochasticMuZeroNet(config.model), step)
    return str(path), sha


# ----------------------------------------------------------------------------- fixtures


@contextlib.contextmanager
def serving(tmp: Path) -> Iterator[dict]:
    """A server over a registry with checkpoints A (best, validated), B, C (corrupt), D."""
    prefix = f"test-api-{uuid.uuid4().hex[:10]}"
    config = make_config(tmp, "main", api_token=TOKEN, validation_queue=prefix + ":validation", redis_prefix=prefix)
    keys = RedisKeys.from_config(config)
    registry = Registry(config.pipeline.database_url)
    registry.ensure_run("test", "EURUSD", {})
    ids = {}
    for name, step in (("A", 100), ("B", 200), ("C", 300), ("D", 400)):
        path, sha = save_tiny(tmp, step, config)
        ids[name] = registry.add_checkpoint("test", step, path, sha)
    best_path = tmp / "main-best" / "best.pt"  # as the validator would: a verified copy
    best_path.parent.mkdir()
    a_path = Path(registry.get_checkpoint(ids["A"]).path)
    best_path.write_bytes(a_path.read_bytes())
    Path(f"{best_path}.sha256").write_text(Path(f"{a_path}.sha256").read_text())
    _add_validation(registry, ids["A"], score=1.5, metrics={"sqn": 1.5, "profit_factor": float("inf"), "trades": 12})
    _add_validation(registry, ids["B"], score=float("-inf"), metrics={"trades": 0})
    registry.set_best(ids["A"], str(best_path))
    c_path = Path(registry.get_checkpoint(ids["C"]).path)
    c_path.write_bytes(c_path.read_bytes()[:-100])  # truncated: fails its sha256

    r = redis.Redis.from_url(REDIS_URL)
    app = create_app(config, keys=keys, poll_interval_s=60.0, device="cpu")
    try:
        with LiveServer(app) as client:
            yield {
                "client": client,
                "config": config,
                "registry": registry,
                "ids": ids,
                "redis": r,
                "keys": keys,
                "app": app,
                "url": f"http://127.0.0.1:{client.base_url.port}",
            }
    finally:
        for key in r.scan_iter(match=prefix + ":*"):
            r.delete(key)
        Queue(config.pipeline.validation_queue, connection=r).delete(delete_jobs=True)
        r.close()
        registry.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The server the read-only tests share (none of them changes the best)."""
    with serving(tmp_path_factory.mktemp("api")) as served:
        yield served


@pytest.fixture
def own_env(tmp_path):
    """A server of its own, for a test that changes the best."""
    with serving(tmp_path) as served:
        yield served


def _add_validation(registry, checkpoint_id: int, score: float, metrics: dict) -> None:
    registry.add_validation(
        checkpoint_id, "ok", score=score, metrics=metrics, error=None, split="validation", duration_s=1.0
    )


# ----------------------------------------------------------------------------- health, status, registry


def test_livez_readyz_status(env):
    client, r, keys, ids = env["client"], env["redis"], env["keys"], env["ids"]
    assert client.get("/livez").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["ready"] and all(c["ok"] for c in ready.json()["checks"].values())
    assert set(ready.json()["checks"]) == {"model", "redis", "database"}

    trainer = {
        "step": 1234,
        "losses": {"policy": 1.1},
        "replay_positions": 5000,
        "episodes_received": 9,
        "episodes_inserted": 8,
        "episodes_rejected": 1,
        "duplicates": 0,
        "learner_steps_per_s": 3.5,
        "updated_at": time.time(),
    }
    r.set(keys.trainer_status, json.dumps(trainer))
    r.set(
        f"{keys.collector_prefix}c1{keys.collector_suffix}",
        json.dumps({"episodes": 7, "model_version": 3, "env_steps_per_s": 900.0}),
        ex=30,
    )
    r.set(
        f"{keys.collector_prefix}c2{keys.collector_suffix}",
        json.dumps({"episodes": 1, "model_version": 0, "env_steps_per_s": 10.0}),
        ex=30,
    )
    queue = Queue(env["config"].pipeline.validation_queue, connection=r)
    queue.enqueue("os.getcwd")
    queue.enqueue("os.getcwd")

    # /status answers from a cache refreshed in the background (every 0.2 s here).
    def refreshed():
        status = client.get("/status")
        assert status.status_code == 200, status.text
        s = status.json()
        return s if s["validation_queue"]["depth"] == 2 and len(s["collectors"]) == 2 else None

    s = wait_for(refreshed, 10)
    assert s, client.get("/status").text
    assert s["errors"] == {} and set(s["refreshed_at"]) == {"redis", "database"}
    assert s["trainer"]["step"] == 1234 and s["trainer"]["losses"] == {"policy": 1.1}
    assert sorted(c["id"] for c in s["collectors"]) == ["c1", "c2"]
    c1 = next(c for c in s["collectors"] if c["id"] == "c1")
    assert c1["episodes"] == 7 and c1["model_version"] == 3 and 0 < c1["ttl_s"] <= 30
    assert s["validation_queue"]["depth"] == 2
    assert s["checkpoints_total"] == 4
    assert s["latest_checkpoint"]["step"] == 400
    best = s["best_checkpoint"]
    assert best["id"] == ids["A"] and best["is_best"]
    assert best["latest_validation"]["metrics"]["profit_factor"] == "inf"  # JSON has no inf
    assert s["served_model"]["checkpoint_id"] == ids["A"] and s["served_model"]["step"] == 100


def test_checkpoints_and_validations(env):
    client, ids = env["client"], env["ids"]
    page = client.get("/checkpoints", params={"limit": 2, "offset": 0}).json()
    assert page["total"] == 4 and page["limit"] == 2 and len(page["items"]) == 2
    everything = client.get("/checkpoints").json()["items"]
    assert {c["id"] for c in everything} == set(ids.values())
    one = client.get(f"/checkpoints/{ids['B']}")
    assert one.status_code == 200 and one.json()["step"] == 200
    assert one.json()["latest_validation"]["score"] == "-inf"
    missing = client.get("/checkpoints/999999")
    assert missing.status_code == 404 and "999999" in missing.json()["detail"]
    assert client.get("/checkpoints/abc").status_code == 422
    assert client.get("/checkpoints", params={"limit": 0}).status_code == 422

    validations = client.get("/validations").json()["items"]
    assert {v["checkpoint_id"] for v in validations} == {ids["A"], ids["B"]}
    only_a = client.get("/validations", params={"checkpoint_id": ids["A"]}).json()["items"]
    assert [v["checkpoint_id"] for v in only_a] == [ids["A"]]
    assert only_a[0]["metrics"]["sqn"] == 1.5


# ----------------------------------------------------------------------------- inference


def test_position_columns_match_the_environment():
    """bars mode rebuilds exactly the observation an episode shows after Buy + Holds."""
    config = Config()
    bars = synthetic_bars("sine", 401, seed=3)
    market = market_from_bars("EURUSD", bars, config)  # row i = bar 119 + i
    newest = len(market) - 2  # bar 399, the newest of bars[:400]
    for side, held in ((1, 10), (-1, 100), (0, 0)):
        env = VecTradingEnv.for_market(
            market,
            num_envs=1,
            episode_length=held + 1,
        )
        env.reset(starts=np.array([newest - held]), lengths=np.array([held + 1]))
        for k in range(held):
            env.step(np.array([(Action.BUY if side == 1 else Action.SELL) if k == 0 else Action.HOLD]))
        expected = env.observe()[0]
        got = observation_from_bars(bars.slice(0, 400), side, held, "EURUSD", config)
        np.testing.assert_allclose(got.obs, expected, atol=1e-6)
        assert got.side == side and (got.legal == env.legal_mask()[0]).all()
        if side:
            assert (expected[:, 9] == side).sum() == min(held, 64)  # the trade shows since its entry
    # An entry among the warm-up bars (before any feature row) still works.
    got = observation_from_bars(bars.slice(0, NEED + 5), 1, NEED, "EURUSD", config)
    assert (got.obs[:, 9] == 1).all() and got.obs[-1, 11] == pytest.approx(np.tanh(NEED / 100), abs=1e-6)


def test_act_with_bars_and_window(env):
    client = env["client"]
    served = client.get("/status").json()["served_model"]["checkpoint_id"]
    bars = synthetic_bars("sine", NEED + 40, seed=1)
    flat = client.post("/v1/act", json={"bars": bars_json(bars)})
    assert flat.status_code == 200, flat.text
    body = flat.json()
    assert body["legal_actions"] == ["HOLD", "BUY", "SELL"] and body["policy"]["CLOSE"] == 0.0
    assert body["action"] in body["legal_actions"] and body["action_index"] == Action[body["action"]]
    assert sum(body["policy"].values()) == pytest.approx(1.0)
    assert body["checkpoint_id"] == served and isinstance(body["value_pips"], float)

    long = client.post(
        "/v1/act", json={"bars": bars_json(bars), "position": {"side": 1, "bars_held": 30}, "symbol": "eurusd"}
    )
    assert long.status_code == 200, long.text
    assert long.json()["action"] != "BUY" and long.json()["policy"]["BUY"] == 0.0
    assert long.json()["legal_actions"] == ["HOLD", "SELL", "CLOSE"]

    # The same state as a ready window gets the same (deterministic, greedy) answer.
    obs = observation_from_bars(bars, 1, 30, "EURUSD", env["config"]).obs
    window = client.post("/v1/act", json={"window": obs.tolist()})
    assert window.status_code == 200, window.text
    assert window.json()["action"] == long.json()["action"]
    assert window.json()["policy"] == pytest.approx(long.json()["policy"], abs=1e-5)
    short = obs.copy()
    short[:, 9] = -1.0
    assert client.post("/v1/act", json={"window": short.tolist()}).json()["action"] != "SELL"
    conflict = client.post("/v1/act", json={"window": obs.tolist(), "position": {"side": -1, "bars_held": 3}})
    assert conflict.status_code == 422 and "position.side" in conflict.json()["message"]

    # Concurrent requests are batched by the inference thread and all answered.
    result = bench_act(env["url"], concurrency=4, requests=24, payload=sample_act_payload(side=-1, bars_held=5))
    assert result["errors"] == 0 and result["requests"] == 24, result
    assert result["p50_ms"] > 0 and result["requests_per_s"] > 0
    # /metrics counts observations per search (wired up; never more than the 4 clients in
    # flight). How well they share searches is tested in test_inference_engine.py.
    assert result["mean_batch"] is not None and 1 <= result["mean_batch"] <= 4, result


def test_act_messages_name_the_problem(env):
    client = env["client"]
    good = bars_json(synthetic_bars("sine", NEED, seed=2))

    def message(body) -> str:
        response = client.post("/v1/act", json=body)
        assert response.status_code == 422, (body if len(str(body)) < 300 else str(body)[:300], response.text)
        return response.json()["message"]

    assert f"at least {NEED}" in message({"bars": good[:-1]})
    broken = [dict(b) for b in good]
    broken[5]["high"] = broken[5]["low"] - 0.001
    assert "bars[5]" in message({"bars": broken}) and "high" in message({"bars": broken})
    unordered = [dict(b) for b in good]
    unordered[7]["ts"] = unordered[6]["ts"]
    assert "bars[7].ts" in message({"bars": unordered})
    naive = [dict(b) for b in good]
    naive[0]["ts"] = naive[0]["ts"].rstrip("Z")
    assert "bars[0].ts" in message({"bars": naive})
    assert "bars_held" in message({"bars": good, "position": {"side": 1, "bars_held": 0}})
    assert "bars_held" in message({"bars": good, "position": {"side": 0, "bars_held": 4}})
    assert "bars_held" in message({"bars": good, "position": {"side": 1, "bars_held": NEED}})  # entry before bar 0
    assert "extra" in message({"bars": good, "colour": "red"}).lower()
    assert "exactly one" in message({"bars": good, "window": [[0.0] * 15] * 64})
    assert "expected 64" in message({"window": [[0.0] * 15] * 63})
    assert "window[3]" in message({"window": [[0.0] * 15] * 3 + [[0.0] * 9] + [[0.0] * 15] * 60})
    assert "window[10][2]" in message(
        {"window": [[0.0] * 15] * 10 + [[0.0, 0.0, 7.0] + [0.0] * 12] + [[0.0] * 15] * 53}
    )


def test_malformed_inputs_are_all_4xx(env):
    client = env["client"]
    good = bars_json(synthetic_bars("sine", NEED, seed=4))
    bar = good[0]
    bodies = [
        None,
        0,
        1.5,
        "text",
        [],
        {},
        [1, 2],
        {"bars": None},
        {"bars": []},
        {"bars": {}},
        {"bars": "x"},
        {"bars": [1, 2, 3]},
        {"bars": [[]]},
        {"bars": [{}]},
        {"bars": [bar] * 300},
        {"bars": [{**bar, "open": "nan"}] + good[1:]},
        {"bars": [{**bar, "close": "Infinity"}] + good[1:]},
        {"bars": [{**bar, "close": 1e308}] + good[1:]},
        {"bars": [{**bar, "open": -1}] + good[1:]},
        {"bars": [{**bar, "open": True}] + good[1:]},
        {"bars": [{**bar, "ts": "yesterday"}] + good[1:]},
        {"bars": [{**bar, "ts": 10**30}] + good[1:]},
        {"bars": [{**bar, "ts": "9999-12-31T00:00:00Z"}] + good[1:]},
        {"bars": [{**bar, "ts": None}] + good[1:]},
        {"bars": [{**bar, "volume": -5}] + good[1:]},
        {"bars": [{**bar, "extra": 1}] + good[1:]},
        {"bars": [{k: v for k, v in bar.items() if k != "close"}] + good[1:]},
        {"bars": good, "position": {"side": 2, "bars_held": 1}},
        {"bars": good, "position": {"side": "long"}},
        {"bars": good, "position": {"side": 1, "bars_held": 10**40}},
        {"bars": good, "position": {"side": 1, "bars_held": -3}},
        {"bars": good, "position": {"side": 1.5}},
        {"bars": good, "position": []},
        {"bars": good, "position": {"side": 1, "bars_held": 2, "x": 0}},
        {"bars": good, "symbol": ""},
        {"bars": good, "symbol": "EUR/USD\n"},
        {"bars": good, "symbol": 5},
        {"bars": good * 30},
        {"window": None},
        {"window": []},
        {"window": [[]] * 64},
        {"window": "abc"},
        {"window": [[0.0] * 15] * 65},
        {"window": [[0.0] * 9] * 64},
        {"window": [[None] * 15] * 64},
        {"window": [["a"] * 15] * 64},
        {"window": [[0.0] * 15] * 63 + [[0.5] * 15]},
        {"window": [[0.0] * 15] * 63 + [[0.0] * 9 + [0.5] + [0.0] * 5]},
        {"window": [[[0.0]] * 15] * 64},
        {"window": [[0.0] * 1000] * 64},
        {"window": [[{"a": 1}] * 15] * 64},
        {"a": {"b": {"c": [[[[[]]]]]}}},
    ]
    statuses = {}
    for i, body in enumerate(bodies):
        response = client.post("/v1/act", json=body)
        statuses[i] = response.status_code
        assert 400 <= response.status_code < 500, (i, str(body)[:200], response.status_code, response.text[:300])
    raw = [
        (b"{not json", {"content-type": "application/json"}),
        (b"", {"content-type": "application/json"}),
        (b'{"bars": [', {"content-type": "application/json"}),
        (b'{"window": [[NaN]]}', {"content-type": "application/json"}),
        (b'{"bars": 1e999999}', {"content-type": "application/json"}),
        (
            json.dumps({"window": [[0.0] * 15] * 64}).replace("0.0", "1e400", 3).encode(),
            {"content-type": "application/json"},
        ),
        (
            json.dumps({"bars": good}).replace('"close": 1', '"close": Infinity', 1).encode(),
            {"content-type": "application/json"},
        ),
        (b"\xff\xfe\x00garbage", {"content-type": "application/json"}),
        (json.dumps({"bars": good}).encode(), {"content-type": "text/plain"}),
        (json.dumps({"bars": good}).encode(), {"content-type": "application/x-www-form-urlencoded"}),
        (b"a=1&b=2", {"content-type": "application/x-www-form-urlencoded"}),
        (b"[" * 5000 + b"]" * 5000, {"content-type": "application/json"}),
    ]
    for i, (content, headers) in enumerate(raw):
        response = client.post("/v1/act", content=content, headers=headers)
        assert 400 <= response.status_code < 500, (i, content[:80], response.status_code, response.text[:300])
    assert client.get("/v1/act").status_code == 405
    assert client.post("/checkpoints/1/promote", content=b"\x00").status_code == 401


# ----------------------------------------------------------------------------- promotion and hot-swap


def test_promote_and_hot_swap(own_env):
    env = own_env
    client, ids, registry, r, keys = env["client"], env["ids"], env["registry"], env["redis"], env["keys"]
    payload = sample_act_payload()
    assert client.post(f"/checkpoints/{ids['B']}/promote").status_code == 401
    wrong = client.post(f"/checkpoints/{ids['B']}/promote", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert client.post("/checkpoints/999999/promote", headers=auth).status_code == 404
    corrupt = client.post(f"/checkpoints/{ids['C']}/promote", headers=auth)
    assert corrupt.status_code == 409 and "sha256" in corrupt.json()["detail"]
    assert client.post("/v1/act", json=payload).json()["checkpoint_id"] == ids["A"]  # nothing changed

    promoted = client.post(f"/checkpoints/{ids['B']}/promote", headers=auth)
    assert promoted.status_code == 200, promoted.text
    best_path = Path(promoted.json()["best_path"])
    assert best_path == Path(env["config"].pipeline.best_dir) / "best.pt"
    assert load_checkpoint(best_path).step == 200  # the copy verifies against its sidecar
    assert registry.best_checkpoint().id == ids["B"]
    assert client.post("/v1/act", json=payload).json()["checkpoint_id"] == ids["B"]
    assert client.get("/status").json()["served_model"]["step"] == 200

    # The validator's announcement on the channel swaps without waiting for the poll ...
    registry.set_best(ids["D"], registry.get_checkpoint(ids["D"]).path)
    r.publish(
        keys.best_channel, json.dumps({"checkpoint_id": ids["D"], "path": registry.get_checkpoint(ids["D"]).path})
    )
    assert wait_for(lambda: client.post("/v1/act", json=payload).json()["checkpoint_id"] == ids["D"], 10)
    # ... and a corrupt new best is refused: the old model keeps serving.
    registry.set_best(ids["C"], registry.get_checkpoint(ids["C"]).path)
    r.publish(
        keys.best_channel, json.dumps({"checkpoint_id": ids["C"], "path": registry.get_checkpoint(ids["C"]).path})
    )
    state = env["app"].state.api
    assert wait_for(lambda: state._failed is not None and state._failed[0] == ids["C"], 10)  # tried and refused
    assert client.post("/v1/act", json=payload).json()["checkpoint_id"] == ids["D"]
    assert client.get("/readyz").status_code == 200


def test_metrics_by_route_template(env):
    client, ids = env["client"], env["ids"]
    client.get(f"/checkpoints/{ids['A']}")
    assert client.post("/v1/act", json={}).status_code == 422  # this test's own 422
    client.get("/no/such/path")
    text = client.get("/metrics").text
    lines = [line for line in text.splitlines() if line.startswith("microzero_api_requests_total{")]
    assert any('route="/checkpoints/{checkpoint_id}"' in line and 'status="200"' in line for line in lines)
    assert any('route="/v1/act"' in line and 'status="422"' in line for line in lines)
    assert any('route="<unmatched>"' in line and 'status="404"' in line for line in lines)
    assert not any(f'route="/checkpoints/{ids["A"]}"' in line for line in lines)
    assert "microzero_api_request_duration_seconds_bucket" in text


# ----------------------------------------------------------------------------- degraded dependencies


def test_not_ready_without_model_then_polls_in_the_best(tmp_path):
    """Empty registry: 503s; a best recorded later (no pub/sub message) is found by the poll."""
    config = make_config(tmp_path, "empty")  # no api_token: promotion disabled
    registry = Registry(config.pipeline.database_url)
    registry.ensure_run("test", "EURUSD", {})
    app = create_app(
        config, keys=RedisKeys.with_prefix(f"test-api-{uuid.uuid4().hex}"), poll_interval_s=0.3, device="cpu"
    )
    with LiveServer(app) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        checks = ready.json()["checks"]
        assert not checks["model"]["ok"] and checks["redis"]["ok"] and checks["database"]["ok"]
        act = client.post("/v1/act", json=sample_act_payload())
        assert act.status_code == 503 and "no model" in act.json()["detail"]
        assert client.get("/status").json()["served_model"] is None
        path, sha = save_tiny(tmp_path, 7, config)
        cid = registry.add_checkpoint("test", 7, path, sha)
        promote = client.post(f"/checkpoints/{cid}/promote", headers={"Authorization": "Bearer x"})
        assert promote.status_code == 403 and "disabled" in promote.json()["detail"]
        registry.set_best(cid, path)
        assert wait_for(lambda: client.get("/readyz").status_code == 200, 10)
        assert client.post("/v1/act", json=sample_act_payload()).json()["checkpoint_id"] == cid


def test_not_ready_when_redis_or_database_unreachable(tmp_path):
    config = make_config(tmp_path, "down")
    config.pipeline.redis_url = "redis://127.0.0.1:1/0"  # nothing listens there
    config.pipeline.database_url = "postgresql+psycopg2://nobody:x@127.0.0.1:1/none?connect_timeout=1"
    with LiveServer(create_app(config, poll_interval_s=60.0, device="cpu")) as client:
        assert client.get("/livez").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503
        checks = ready.json()["checks"]
        assert not checks["redis"]["ok"] and not checks["database"]["ok"] and not checks["model"]["ok"]
        status = client.get("/status")
        assert status.status_code == 200 and {"redis", "database"} <= set(status.json()["errors"])
        assert client.get("/checkpoints").status_code == 503
