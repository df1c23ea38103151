"""Load test of ``POST /v1/act``: latency percentiles and throughput with concurrent clients."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from shared.config import Config
from shared.features import warmup_bars


def sample_act_payload(
    bars: int | None = None, side: int = 1, bars_held: int = 12, symbol: str = "EURUSD", seed: int = 0
) -> dict[str, Any]:
    """A valid bars-mode /v1/act body built from synthetic bars (default: the minimum count + bars_held)."""
    from shared.data.synthetic import synthetic_bars

    n = bars or warmup_bars(60) + 64 + bars_held
    frame = synthetic_bars("sine", n, seed=seed)
    ts = np.datetime_as_string(frame.ts, unit="s")
    return {
        "bars": [
            {"ts": f"{t}Z", "open": float(o), "high": float(h), "low": float(lo), "close": float(c)}
            for t, o, h, lo, c in zip(ts, frame.open, frame.high, frame.low, frame.close)
        ],
        "position": {"side": side, "bars_held": bars_held if side else 0},
        "symbol": symbol,
    }


def bench_act(
    url: str, concurrency: int = 8, requests: int = 400, payload: dict[str, Any] | None = None, timeout: float = 30.0
) -> dict[str, Any]:
    """Send `requests` POST /v1/act from `concurrency` threads (one HTTP client each).

    `url` is the API's base URL (``http://host:port``) or the full ``/v1/act`` URL.
    Returns latency p50/p90/p99/mean in ms, requests/s over the whole run, the count of
    non-200 answers (their first status and message under ``first_error``), and the mean
    number of observations per search the server ran meanwhile (``mean_batch``, from its
    ``/metrics``; None where it exports none), which says how well clients shared searches.
    """
    import httpx

    target = url.rstrip("/")
    if not target.endswith("/v1/act"):
        target += "/v1/act"
    metrics_url = target.removesuffix("/v1/act") + "/metrics"
    payload = payload or sample_act_payload()
    body = json.dumps(payload).encode()  # encoded once: the load generator measures the server, not json.dumps
    headers = {"content-type": "application/json"}
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(requests))
    ready = threading.Barrier(concurrency + 1)  # the clock starts once every client is warm

    def client_loop() -> None:
        with httpx.Client(timeout=timeout) as client:
            try:
                client.post(target, content=body, headers=headers)  # warm the connection; not timed
            finally:
                ready.wait()
            while True:
                with lock:
                    if next(counter, None) is None:
                        return
                start = time.perf_counter()
                try:
                    response = client.post(target, content=body, headers=headers)
                    ok, why = response.status_code == 200, f"{response.status_code} {response.text[:200]}"
                except httpx.HTTPError as exc:
                    ok, why = False, f"{type(exc).__name__}: {exc}"
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    if not ok:
                        errors.append(why)

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = [pool.submit(client_loop) for _ in range(concurrency)]
        ready.wait()
        before = _search_batches(metrics_url)
        start = time.perf_counter()
        for f in futures:
            f.result()
    wall = time.perf_counter() - start
    after = _search_batches(metrics_url)
    mean_batch = None
    if before is not None and after is not None and after[0] > before[0]:
        mean_batch = (after[1] - before[1]) / (after[0] - before[0])
    ms = np.array(latencies) * 1000.0 if latencies else np.zeros(1)
    return {
        "url": target,
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "requests_per_s": len(latencies) / wall if wall > 0 else 0.0,
        "wall_s": wall,
        "mean_batch": mean_batch,
    }


def _search_batches(metrics_url: str) -> tuple[float, float] | None:
    """(searches, observations searched) so far, from the API's batch-size histogram;
    None when its /metrics cannot be read or lacks it."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = httpx.get(metrics_url, timeout=5.0).text
        values = {
            sample.name: sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "microzero_api_inference_batch_size"
            for sample in family.samples
            if sample.name.endswith(("_count", "_sum"))
        }
    except (httpx.HTTPError, ValueError):
        return None
    if not values:
        return None
    return values["microzero_api_inference_batch_size_count"], values["microzero_api_inference_batch_size_sum"]


@contextlib.contextmanager
def served_untrained_model(config: Config) -> Iterator[str]:
    """A real ``microzero api`` process on a free local port serving an untrained
    `config.model`, registered as best in a throw-away SQLite registry; yields its URL.

    Latency depends on the model's size and the search, not on its weights, so this
    measures what a trained checkpoint of the same config would cost. The server runs
    in its own process, as deployed, so the load generator does not share its GIL.
    """
    import httpx
    import torch

    from shared.learning.checkpoint import save_checkpoint
    from shared.model.networks import StochasticMuZeroNet
    from shared.registry import Registry

    with tempfile.TemporaryDirectory(prefix="mz-bench-api-") as tmp:
        folder = Path(tmp)
        database_url = f"sqlite:///{folder / 'registry.db'}"
        path = folder / "ckpt-000000001.pt"
        torch.manual_seed(0)
        sha = save_checkpoint(path, StochasticMuZeroNet(config.model), 1)
        registry = Registry(database_url)
        registry.ensure_run("bench", config.pipeline.symbol, {})
        registry.set_best(registry.add_checkpoint("bench", 1, str(path), sha), str(path))
        registry.close()
        # The server reads a config of its own: this registry, and no Redis at all (a
        # configured one could hand it another published model than the one measured).
        pipeline = config.pipeline.model_copy(
            update={
                "redis_url": None,
                "database_url": database_url,
                "best_dir": folder / "best",
                "checkpoints_dir": folder,  # the API serves only files inside its checkpoint folders
            }
        )
        server_config = folder / "config.json"
        server_config.write_text(config.model_copy(update={"pipeline": pipeline}).model_dump_json())
        env = {k: v for k, v in os.environ.items() if k != "REDIS_URL" and not k.startswith("MZ_")}
        log_path = folder / "api.log"
        with open(log_path, "w") as log:
            server = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "services.cli",
                    "--config",
                    str(server_config),
                    "api",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--log-level",
                    "info",
                ],  # port 0: the OS picks; the log says which
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        url = None
        try:
            deadline = time.monotonic() + 120
            while True:  # ready = the model is loaded (Redis is absent on purpose: 503 for that alone)
                if server.poll() is not None:
                    raise RuntimeError(f"the benchmark API exited: {log_path.read_text()[-2000:]}")
                if url is None:
                    found = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", log_path.read_text())
                    url = found.group(1) if found else None
                if url is not None:
                    try:
                        checks = httpx.get(f"{url}/readyz", timeout=2).json()["checks"]
                        if checks["model"]["ok"]:
                            break
                    except (httpx.HTTPError, KeyError, ValueError):
                        pass
                if time.monotonic() > deadline:
                    raise RuntimeError("the benchmark API did not load its model within 120 s")
                time.sleep(0.2)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def request_phases(
    config: Config, payload: dict[str, Any], batch_sizes: tuple[int, ...] = (1, 8), repeats: int = 20
) -> dict[str, float]:
    """Where a ``/v1/act`` request's time goes, measured in this process on the model
    ``served_untrained_model`` serves (same config, same seed), one torch thread like the
    API's inference thread: JSON parse + validation, observation, and the bare greedy
    search (``shared.serving.decide``) at each batch size. Median ms of `repeats`."""
    import torch
    from pydantic_core import from_json

    from shared.learning.checkpoint import save_checkpoint
    from shared.model.networks import StochasticMuZeroNet
    from shared.serving.decide import decide
    from shared.serving.model import load_served_model
    from shared.serving.observation import observation_from_bars
    from shared.serving.schemas import ActRequest

    with tempfile.TemporaryDirectory(prefix="mz-bench-search-") as tmp:
        path = Path(tmp) / "ckpt-000000001.pt"
        torch.manual_seed(0)
        save_checkpoint(path, StochasticMuZeroNet(config.model), 1)
        served = load_served_model(path, 1, config, "cpu")
    raw = json.dumps(payload)

    def parse() -> ActRequest:  # as the API does: pydantic-core's JSON parser, then the models
        return ActRequest.model_validate(from_json(raw))

    request = parse()
    position = request.position
    assert request.bars is not None and position is not None

    def observe():
        assert request.bars is not None
        return observation_from_bars(
            request.bars, position.side, position.bars_held, request.symbol or "EURUSD", served.config
        )

    obs = observe()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {"parse_ms": _median_ms(parse, repeats), "observation_ms": _median_ms(observe, repeats)}
        for b in batch_sizes:
            out[f"search_b{b}_ms"] = _median_ms(lambda n=b: decide(served, [obs] * n), repeats)
    finally:
        torch.set_num_threads(threads)
    return out


def _median_ms(fn: Any, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000.0)
