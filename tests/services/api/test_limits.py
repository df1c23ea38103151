"""The request body size limit (``pipeline.api_max_body_bytes``) against a real uvicorn server.

No Redis and no model are needed: the limit acts before any route runs.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.api.app import create_app
from services.api.schemas import MAX_BARS
from shared.config import Config
from tests.helpers import LiveServer


def _config(tmp: Path, **pipeline) -> Config:
    return Config(
        pipeline={
            "database_url": f"sqlite:///{tmp / 'registry.db'}",
            "redis_url": "redis://127.0.0.1:1/0",  # nothing listens: the limit needs no Redis
            "checkpoints_dir": str(tmp / "checkpoints"),
            "best_dir": str(tmp / "best"),
            **pipeline,
        }
    )


def largest_legitimate_act_body() -> bytes:
    """5,000 bars (the schema's maximum) with the longest plausible numbers and
    timestamps, pretty-printed with indent 4: the biggest body /v1/act should accept."""
    start = datetime(2024, 3, 4, tzinfo=UTC)
    bar = {"open": 123456789.12345678, "high": 123456789.12345679, "low": 123456789.12345677}
    bars = [
        {
            "ts": (start + timedelta(hours=i, microseconds=123456)).astimezone().isoformat(),
            **bar,
            "close": 123456789.12345678,
            "volume": 1.2345678901234567e300,
        }
        for i in range(MAX_BARS)
    ]
    body = {"bars": bars, "position": {"side": 1, "bars_held": 999_999}, "symbol": "A" * 32}
    return json.dumps(body, indent=4).encode()


@pytest.fixture(scope="module")
def small_limit(tmp_path_factory):
    """A server refusing bodies over 2,048 bytes."""
    with LiveServer(create_app(_config(tmp_path_factory.mktemp("limit"), api_max_body_bytes=2048))) as client:
        yield client


def test_default_limit_admits_the_largest_legitimate_body(tmp_path):
    body = largest_legitimate_act_body()
    limit = Config().pipeline.api_max_body_bytes
    assert 1_000_000 < len(body) < limit <= 8 * 1024 * 1024, (len(body), limit)
    with LiveServer(create_app(_config(tmp_path))) as client:
        response = client.post("/v1/act", content=body, headers={"content-type": "application/json"})
        # Past the limit and the schema; refused only because this server has no model.
        assert response.status_code == 503 and "no model" in response.json()["detail"], response.text[:300]


def test_declared_length_over_the_limit_is_413(small_limit):
    response = small_limit.post("/v1/act", content=b"x" * 4096, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/json"
    detail = response.json()["detail"]
    assert "2,048 bytes" in detail and "api_max_body_bytes" in detail and "4,096 bytes declared" in detail


def test_chunked_body_over_the_limit_is_413(small_limit):
    sent = []

    def chunks():  # no Content-Length: httpx sends Transfer-Encoding: chunked
        for _ in range(10):
            sent.append(500)
            yield b" " * 500

    response = small_limit.post("/v1/act", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413, response.text
    assert "more than that sent" in response.json()["detail"]
    # The server keeps working, and small bodies still reach the routes.
    assert small_limit.get("/livez").json() == {"status": "ok"}
    assert small_limit.post("/v1/act", json={}).status_code == 422


def test_chunked_body_within_the_limit_reaches_the_route(small_limit):
    def chunks():
        yield b'{"bars": [], '
        yield b'"window": [[0.0]]}'

    response = small_limit.post("/v1/act", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 422 and "exactly one" in response.json()["message"]


def test_malformed_content_length_is_400(small_limit):
    import socket

    with socket.create_connection(("127.0.0.1", small_limit.base_url.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/act HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n")
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]


def test_json_bodies_decode_as_the_standard_library_does():
    """FastJsonRequest: pydantic-core's parser where it accepts a body, json.loads otherwise
    (so a bad body gets FastAPI's usual answer)."""
    import asyncio

    from services.api.json_body import FastJsonRequest

    def decoded(body: bytes):
        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        request = FastJsonRequest({"type": "http", "method": "POST", "headers": []}, receive)
        return asyncio.run(request.json())

    for body in [b'{"a": 1.1, "b": [1e-7, 0.30000000000000004, 12345678901234567890123]}', b'{"a":1,"a":2}']:
        assert decoded(body) == json.loads(body)
    assert decoded(b'"\\ud800"') == "\ud800"  # pydantic-core refuses a lone surrogate; json.loads does not
    assert decoded(b"\xef\xbb\xbf{}") == {}  # a UTF-8 BOM
    with pytest.raises(json.JSONDecodeError):
        decoded(b"{not json")
