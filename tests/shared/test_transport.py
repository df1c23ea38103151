"""The episode codec, the Redis stream and the model record against a real Redis
(``$REDIS_URL`` or 127.0.0.1:6379; every key under a unique test prefix, deleted after)."""

from __future__ import annotations

import ast
import json
import os
import signal
import struct
import time
import uuid

import numpy as np
import pytest
import redis
from prometheus_client import REGISTRY

from shared.episode import Episode
from shared.transport.codec import EpisodeDecodeError, decode_episode, encode_episode
from shared.transport.connection import (
    Backoff,
    call_with_retry,
    connect,
    embedded_redis,
    embedded_redis_alive,
    restart_embedded_redis,
)
from shared.transport.streams import FIELD, EpisodeStream, publish_model, read_model
from tests.helpers import REPO

pytestmark = pytest.mark.redis

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def make_episode(T: int = 360, seed: int = 0, episode_id: str = "c1-s-0") -> Episode:
    rng = np.random.default_rng(seed)
    masks = rng.random((T, 4)) < 0.7
    masks[:, 0] = True
    policy = rng.random((T, 4)).astype(np.float32) * masks
    return Episode(
        run_id="run-1",
        symbol="EURUSD",
        split="train",
        start_bar=int(rng.integers(0, 5000)),
        model_version=7,
        actions=rng.integers(0, 4, T).astype(np.uint8),
        rewards=rng.normal(0, 3, T).astype(np.float32),
        root_values=rng.normal(0, 10, T).astype(np.float32),
        policy_targets=(policy / policy.sum(1, keepdims=True)).astype(np.float32),
        legal_masks=masks,
        episode_id=episode_id,
    )


def assert_same(a: Episode, b: Episode) -> None:
    for name in ("run_id", "symbol", "split", "start_bar", "model_version", "episode_id"):
        assert getattr(a, name) == getattr(b, name), name
    for name in ("actions", "rewards", "root_values", "policy_targets", "legal_masks"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), name


def split_message(data: bytes) -> tuple[dict, bytes]:
    (header_len,) = struct.unpack_from("<I", data, 4)
    return json.loads(data[8 : 8 + header_len]), data[8 + header_len :]


def join_message(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return b"MZEP" + struct.pack("<I", len(raw)) + raw + body


# ----------------------------------------------------------------------------- codec


def test_codec_round_trip_is_exact_and_small():
    episode = make_episode()
    episode.rewards[:3] = [-0.0, np.float32(1e-42), np.finfo(np.float32).max]  # sign of zero, subnormal, extreme
    data = encode_episode(episode)
    assert isinstance(data, bytes) and len(data) < 20_000, len(data)
    decoded = decode_episode(data)
    assert_same(episode, decoded)
    assert decoded.actions.flags.writeable  # owns its memory, not a view of the message
    assert encode_episode(decoded) == data
    assert_same(make_episode(T=1), decode_episode(encode_episode(make_episode(T=1))))


def test_codec_never_pickles():
    tree = ast.parse((REPO / "shared/transport/codec.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not imported & {"pickle", "cPickle", "dill", "cloudpickle", "marshal"}
    header, _ = split_message(encode_episode(make_episode()))
    assert header["format"] == 1 and header["arrays"][0]["name"] == "actions"


def _edited(edit) -> bytes:
    header, body = split_message(encode_episode(make_episode(T=10)))
    edit(header, body)
    return join_message(header, body)


@pytest.mark.parametrize(
    "message, error",
    [
        (b"", "truncated"),
        (b"MZEP\x05", "truncated"),
        (b"PK\x03\x04" + b"\x00" * 40, "not an episode message"),
        (b"MZEP" + struct.pack("<I", 10**9), "more than the limit"),
        (b"MZEP" + struct.pack("<I", 50) + b"{}", "truncated inside its header"),
        (b"MZEP" + struct.pack("<I", 5) + b"{nope", "not valid JSON"),
        (encode_episode(make_episode(T=10))[:-1], "truncated: legal_masks"),
        (encode_episode(make_episode(T=10))[:200], "truncated"),
        (encode_episode(make_episode(T=10)) + b"\x00", "1 unexpected bytes"),
        (_edited(lambda h, b: h.update(format=2)), "format version 2 is not supported"),
        (_edited(lambda h, b: h["arrays"][1].update(dtype="<f8")), "rewards has dtype '<f8', expected '<f4'"),
        (
            _edited(lambda h, b: h["arrays"][3].update(shape=[10, 5])),
            "policy_targets has shape (10, 5), expected (10, 4)",
        ),
        (_edited(lambda h, b: h["arrays"][2].update(shape=[9])), "root_values has shape (9,)"),
        (_edited(lambda h, b: h["arrays"][0].update(shape=[0])), "episode length 0"),
        (_edited(lambda h, b: h["arrays"].reverse()), "in that order"),
        (_edited(lambda h, b: h["meta"].pop("episode_id")), "missing ['episode_id']"),
        (_edited(lambda h, b: h["meta"].update(start_bar="12")), "start_bar must be a non-negative integer"),
        (_edited(lambda h, b: h["meta"].update(model_version=-1)), "model_version must be a non-negative integer"),
    ],
)
def test_codec_refuses_bad_messages(message, error):
    with pytest.raises(EpisodeDecodeError, match=None) as info:
        decode_episode(message)
    assert error in str(info.value), str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "field, value, error",
    [
        ("rewards", np.nan, "rewards holds 1 non-finite values (first at [3])"),
        ("root_values", np.inf, "root_values holds 1 non-finite"),
        ("policy_targets", -np.inf, "policy_targets holds 1 non-finite"),
        ("policy_targets", -0.5, "negative probabilities"),
        ("actions", 4, "actions hold values outside [0, 4)"),
        ("legal_masks", 2, "legal_masks holds bytes other than 0 and 1"),
    ],
)
def test_codec_refuses_bad_values(field, value, error):
    data = bytearray(encode_episode(make_episode(T=10)))
    header, _ = split_message(bytes(data))
    offset = len(data) - sum(int(np.prod(a["shape"])) * np.dtype(a["dtype"]).itemsize for a in header["arrays"])
    for spec in header["arrays"]:
        if spec["name"] == field:
            break
        offset += int(np.prod(spec["shape"])) * np.dtype(spec["dtype"]).itemsize
    dtype = np.dtype(spec["dtype"])
    raw = np.array([value], dtype=np.uint8 if dtype.kind == "b" else dtype).tobytes()
    k = 3 * (4 if field in ("policy_targets", "legal_masks") else 1)  # row 3
    data[offset + k * dtype.itemsize : offset + (k + 1) * dtype.itemsize] = raw
    with pytest.raises(EpisodeDecodeError) as info:
        decode_episode(bytes(data))
    assert error in str(info.value), str(info.value)


def test_codec_refuses_non_bytes():
    with pytest.raises(EpisodeDecodeError, match="must be bytes"):
        decode_episode("MZEP")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- Redis


@pytest.fixture
def client():
    r = connect(REDIS_URL)
    r.ping()
    prefix = f"test:transport:{uuid.uuid4().hex[:10]}"
    r.test_prefix = prefix  # type: ignore[attr-defined]
    yield r
    for key in r.scan_iter(match=f"{prefix}*", count=1000):
        r.delete(key)
    r.close()


def sample(name: str, labels: dict | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def test_publish_read_ack_and_lag(client):
    stream = EpisodeStream(client, f"{client.test_prefix}:episodes", maxlen=1000)
    assert stream.lag("g") is None  # no group yet
    assert stream.ensure_group("g") is True and stream.ensure_group("g") is False
    episodes = [make_episode(seed=i, episode_id=f"c-{i}") for i in range(5)]
    ids = [stream.publish(e) for e in episodes[:3]] + stream.publish_many(episodes[3:])
    assert len(set(ids)) == 5 and stream.length() == 5
    assert stream.lag("g") == 5

    got = stream.read("g", "consumer-a", count=3)
    assert [i for i, _ in got] == ids[:3]
    for (_, episode), sent in zip(got, episodes):
        assert_same(sent, episode)
    assert stream.lag("g") == 2 and stream.pending_count("g") == 3
    # Before acking, the consumer's own pending entries can be read again (a lost reply).
    assert [i for i, _ in stream.read("g", "consumer-a", count=10, pending=True)] == ids[:3]
    assert stream.ack("g", [i for i, _ in got]) == 3
    assert stream.pending_count("g") == 0
    rest = stream.read("g", "consumer-a", count=10, block_ms=100)
    assert [i for i, _ in rest] == ids[3:]
    # The server-side count used where XINFO reports no lag agrees with XINFO.
    info = stream.group_info("g")
    assert stream._count_after(keys=[stream.stream], args=[info["last-delivered-id"], 100]) == 0
    assert stream._count_after(keys=[stream.stream], args=["0-0", 100]) == 5
    started = time.monotonic()
    assert stream.read("g", "consumer-a", count=10, block_ms=200) == []
    assert time.monotonic() - started >= 0.15  # it blocked


def test_maxlen_is_approximate_but_bounds_the_stream(client):
    stream = EpisodeStream(client, f"{client.test_prefix}:episodes", maxlen=100)
    episode = make_episode(T=5)
    stream.publish_many([episode] * 400)
    assert 100 <= stream.length() < 400


def test_stale_entries_of_a_dead_consumer_are_claimed(client):
    stream = EpisodeStream(client, f"{client.test_prefix}:episodes", maxlen=1000)
    stream.ensure_group("g")
    ids = stream.publish_many([make_episode(T=8, seed=i, episode_id=f"c-{i}") for i in range(3)])
    taken = stream.read("g", "dead-consumer", count=2)  # read, never acked: the consumer died
    assert [i for i, _ in taken] == ids[:2]
    assert stream.claim_stale("g", "survivor", min_idle_ms=60_000) == []  # not idle long enough yet
    time.sleep(0.12)
    claimed = stream.claim_stale("g", "survivor", min_idle_ms=100)
    assert [i for i, _ in claimed] == ids[:2]
    assert [e.episode_id for _, e in claimed] == ["c-0", "c-1"]
    pending = client.xpending_range(stream.stream, "g", min="-", max="+", count=10)
    assert {p["consumer"] for p in pending} == {b"survivor"}
    stream.ack("g", [i for i, _ in claimed])
    assert stream.pending_count("g") == 0
    assert [i for i, _ in stream.read("g", "survivor")] == ids[2:]


def test_garbage_entries_are_dead_lettered_not_lost(client):
    stream = EpisodeStream(client, f"{client.test_prefix}:episodes", maxlen=1000)
    stream.ensure_group("g")
    before = sample("microzero_episodes_rejected_total")
    good = stream.publish(make_episode(T=8, episode_id="ok"))
    bad1 = client.xadd(stream.stream, {FIELD: b"\x80\x04garbage"}).decode()
    bad2 = client.xadd(stream.stream, {b"something": b"else"}).decode()
    truncated = client.xadd(stream.stream, {FIELD: encode_episode(make_episode(T=8))[:-3]}).decode()
    got = dict(stream.read("g", "c", count=10))
    assert isinstance(got[good], Episode)
    for entry_id in (bad1, bad2, truncated):
        assert isinstance(got[entry_id], EpisodeDecodeError)
    assert stream.pending_count("g") == 1  # the bad ones are acked already; the good one waits for its ack
    dead = {d["source_id"]: d for d in stream.dead_letters()}
    assert set(dead) == {bad1, bad2, truncated}
    assert "not an episode message" in dead[bad1]["reason"]
    assert "no 'episode' field" in dead[bad2]["reason"]
    assert "truncated" in dead[truncated]["reason"]
    assert dead[bad1]["payload_bytes"] == len(b"\x80\x04garbage")  # the original payload is kept
    assert sample("microzero_episodes_rejected_total") - before == 3


def test_entries_trimmed_before_processing_are_recorded_as_lost(client):
    stream = EpisodeStream(client, f"{client.test_prefix}:episodes", maxlen=1000)
    stream.ensure_group("g")
    ids = stream.publish_many([make_episode(T=4, seed=i, episode_id=f"t-{i}") for i in range(6)])
    stream.read("g", "reader", count=6)  # delivered, never acked
    client.xtrim(stream.stream, maxlen=2, approximate=False)  # MAXLEN overtook the reader
    time.sleep(0.01)
    claimed = stream.claim_stale("g", "other", min_idle_ms=1)  # Redis 7: reported as deleted ids
    own = stream.read("g", "reader", count=10, pending=True)  # 6.2 and history reads: empty fields
    lost = {d["source_id"] for d in stream.dead_letters() if d["reason"].startswith("lost: the stream's MAXLEN")}
    assert lost == set(ids[:4])
    assert [i for i, e in claimed + own if isinstance(e, Episode)] == ids[4:]
    stream.ack("g", ids[4:])
    assert stream.pending_count("g") == 0


def test_a_vanished_group_is_recreated(client):
    stream = EpisodeStream(client, f"{client.test_prefix}:episodes", maxlen=1000)
    stream.ensure_group("g")
    stream.publish(make_episode(T=8, episode_id="a"))
    client.xgroup_destroy(stream.stream, "g")
    got = stream.read("g", "c")  # NOGROUP -> recreated from the start -> redelivered
    assert [e.episode_id for _, e in got] == ["a"]
    client.delete(stream.stream)  # the stream itself gone
    assert stream.read("g", "c") == [] and stream.group_info("g") is not None
    client.delete(stream.stream)
    assert stream.claim_stale("g", "c", 0) == [] and stream.group_info("g") is not None


def test_model_record_is_set_and_published(client):
    key = f"{client.test_prefix}:model"
    assert read_model(client, key) is None
    pubsub = client.pubsub()
    pubsub.subscribe(key)
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"
    record = publish_model(client, key, 1000, "/ckpt/ckpt-000001000.pt", "ab" * 32, checkpoint_id=3)
    assert read_model(client, key) == record
    assert record["version"] == 1000 and record["checkpoint_id"] == 3
    message = pubsub.get_message(timeout=2)
    assert message["type"] == "message" and json.loads(message["data"]) == record
    pubsub.close()
    client.set(key, b"{broken")
    assert read_model(client, key) is None


# ----------------------------------------------------------------------------- connections


def test_retry_backs_off_and_counts_one_reconnect():
    calls = []

    def flaky():
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise redis.ConnectionError("connection refused")
        return "ok"

    before = sample("microzero_redis_reconnects_total", {"service": "test-retry"})
    assert call_with_retry(flaky, service="test-retry", backoff=Backoff(base=0.01, cap=0.05)) == "ok"
    assert len(calls) == 3
    assert sample("microzero_redis_reconnects_total", {"service": "test-retry"}) - before == 1
    with pytest.raises(redis.TimeoutError):
        call_with_retry(
            lambda: (_ for _ in ()).throw(redis.TimeoutError("slow")),
            service="test-retry",
            backoff=Backoff(base=0.001, cap=0.001),
            max_attempts=2,
        )
    with pytest.raises(KeyError):  # not a Redis outage: no retry
        call_with_retry(lambda: {}["x"], service="test-retry")
    delays = [Backoff(base=0.1, cap=1.0).next_delay() for _ in range(50)]
    assert all(0.02 <= d <= 0.1 for d in delays)  # first delay: jitter in [floor, base]
    backoff = Backoff(base=0.1, cap=1.0)
    assert max(backoff.next_delay() for _ in range(40)) <= 1.0


def test_connect_fails_fast_on_a_dead_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # held, never listening: connections are refused
        port = s.getsockname()[1]
        client = connect(f"redis://127.0.0.1:{port}/0")
        started = time.monotonic()
        with pytest.raises(redis.ConnectionError):
            client.ping()
    assert time.monotonic() - started < 3
    with pytest.raises(ValueError, match="no Redis URL"):
        connect("")


def test_embedded_redis(tmp_path):
    server, url = embedded_redis(tmp_path / "redis.db")
    try:
        assert url.startswith("unix://")
        client = connect(url)
        stream = EpisodeStream(client, "mz:episodes", maxlen=100)
        stream.ensure_group("trainers")
        stream.publish(make_episode(T=5, episode_id="x"))
        assert [e.episode_id for _, e in stream.read("trainers", "c")] == ["x"]
        assert stream.lag("trainers") == 0  # Redis 6.2: no XINFO lag, the bounded count answers
        stream.publish(make_episode(T=5, episode_id="y"))
        assert stream.lag("trainers") == 1
        client.close()
    finally:
        server.shutdown()


def test_a_killed_embedded_redis_restarts_on_the_same_socket_with_its_data(tmp_path):
    """What ``microzero up`` does when its Redis dies: same socket (a client made before
    reconnects by itself), same append-only file (the data is back)."""
    server, url = embedded_redis(tmp_path / "redis.db")
    client = connect(url)
    try:
        client.set("kept", b"1")
        time.sleep(1.5)  # appendfsync everysec
        pid = server.pid
        assert embedded_redis_alive(server)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while embedded_redis_alive(server):
            assert time.monotonic() < deadline, "still alive after SIGKILL"
            time.sleep(0.05)
        with pytest.raises(redis.ConnectionError):
            client.get("kept")
        restart_embedded_redis(server)
        assert embedded_redis_alive(server) and server.pid != pid
        assert f"unix://{server.socket_file}" == url
        assert client.get("kept") == b"1"  # the old client, reconnected; the AOF replayed
    finally:
        client.close()
        server.shutdown()
