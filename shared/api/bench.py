"""Load test of ``POST /v1/act``: latency percentiles and throughput with concurrent clients."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

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
    Returns latency p50/p90/p99/mean in ms, requests/s over the whole run, and the
    count of non-200 answers (their first status and message under ``first_error``).
    """
    import httpx

    target = url.rstrip("/")
    if not target.endswith("/v1/act"):
        target += "/v1/act"
    payload = payload or sample_act_payload()
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(requests))
    ready = threading.Barrier(concurrency + 1)  # the clock starts once every client is warm

    def client_loop() -> None:
        with httpx.Client(timeout=timeout) as client:
            try:
                client.post(target, json=payload)  # warm the connection; not timed
            finally:
                ready.wait()
            while True:
                with lock:
                    if next(counter, None) is None:
                        return
                start = time.perf_counter()
                try:
                    response = client.post(target, json=payload)
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
        start = time.perf_counter()
        for f in futures:
            f.result()
    wall = time.perf_counter() - start
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
    }
