"""The validator's RQ job: backtest a checkpoint, score it, keep the best.

The trainer records each checkpoint in the SQL registry and enqueues its validation
(``shared.transport.jobs.enqueue_validation``); a validator (``microzero validator``,
an RQ worker) runs :func:`validate_checkpoint`, which backtests the checkpoint greedily
over the *whole* validation split (``shared.training.evaluate``), stores the metrics,
the score (:mod:`services.validator.scoring`) and the equity curve downsampled to at
most :data:`EQUITY_POINTS` points (:func:`equity_curve`, drawn by the API's status
page), and hands it to the one promotion
path, ``shared.checkpoint_store.promote``: when the score beats the best so far the
file is copied to ``best_dir/best.pt`` (plus a history copy), flagged with
``registry.set_best`` and published on the Redis channel ``mz:best`` so the API
hot-swaps.

Failures:

* **Deterministic** — the checkpoint is not in the registry, its file is missing,
  truncated or tampered with (``CheckpointError``), it does not fit the validator's
  config, or its symbol has no bars. Retrying cannot help, so the job records one
  ``failed`` validation with the reason, sets ``retries_left = 0`` on the running RQ
  job (RQ decides on a retry from that very job object after the function raised) and
  raises :class:`ValidationFailed` with the reason, which RQ stores in the job's
  ``exc_info``. The worker then takes the next job.
* **Transient** — anything else (database or data store briefly unavailable, a job
  timeout, an out-of-memory error): a ``failed`` validation is recorded when the
  registry can be reached, and the original exception propagates, so RQ retries the
  job per ``Retry(max=validation_retries, interval=[5, 30])``.

Every failed attempt counts in ``microzero_validations_total{status="failed"}``.

**Idempotent by checkpoint id.** A checkpoint that already has an ``ok`` validation is
not validated again: the job returns that validation's summary (``already_validated``)
after making sure its promotion happened. So a job re-run after a crash or a Redis
outage (``services.validator.worker``) never records a second validation.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

import numpy as np
import torch
from rq import get_current_job

from services.validator.scoring import quality_score
from shared.checkpoint_store import PromotionError, promote
from shared.config import Config, load_config
from shared.device import pick_device
from shared.metrics import TradingMetrics, compute_metrics
from shared.observability import (
    VALIDATION_DURATION,
    VALIDATION_METRIC,
    VALIDATION_SCORE,
    VALIDATIONS,
)
from shared.registry import CheckpointRecord, Registry, ValidationRecord
from shared.transport.connection import connect, resolve_redis_url
from shared.transport.keys import RedisKeys

log = logging.getLogger(__name__)

VALIDATION_SPLIT = "validation"
# Points kept of the validation equity curve: enough for a chart a few hundred pixels
# wide, small enough (a few KB of JSON) to store with every validation.
EQUITY_POINTS = 200
_SUMMARY = (
    "trades",
    "win_rate",
    "expectancy",
    "total_pips",
    "profit_factor",
    "sqn",
    "amddp1_per_trade",
    "max_drawdown_pips",
    "sharpe",
    "deflated_sharpe",
)


class ValidationFailed(Exception):
    """A checkpoint cannot be validated, and retrying will not change that."""

    def __init__(self, checkpoint_id: int, reason: str) -> None:
        super().__init__(f"validation of checkpoint {checkpoint_id} failed: {reason}")
        self.checkpoint_id, self.reason = checkpoint_id, reason


# --------------------------------------------------------------------------- the job


_registries: dict[str, Registry] = {}
_registries_lock = threading.Lock()


def _registry(url: str) -> Registry:
    """One Registry (engine + pool) per database URL per process."""
    with _registries_lock:
        if url not in _registries:
            _registries[url] = Registry(url)
        return _registries[url]


def _no_retry() -> None:
    """Tell RQ not to retry the running job (a no-op outside a worker)."""
    job = get_current_job()
    if job is not None:
        job.retries_left = 0


def validate_checkpoint(checkpoint_id: int) -> dict[str, Any]:
    """The RQ job: validate registry checkpoint `checkpoint_id` (see the module doc).

    Reads the config with ``load_config()`` (``MZ_CONFIG`` / ``MZ_*`` reach the worker),
    backtests greedily over the validation split in ``pipeline.validation_chunks`` chunks
    (CUDA when available) with ``n_trials`` = the run's checkpoint count for the deflated
    Sharpe, records the metrics and :func:`quality_score`, updates the Prometheus
    metrics and the best checkpoint. Returns a small JSON-able summary.
    """
    started = time.monotonic()
    checkpoint_id = int(checkpoint_id)
    config = load_config()
    registry = _registry(config.pipeline.database_url)
    record = registry.get_checkpoint(checkpoint_id)
    if record is None:
        VALIDATIONS.labels(status="failed").inc()
        _no_retry()
        raise ValidationFailed(checkpoint_id, f"checkpoint {checkpoint_id} is not in the registry {registry!r}")
    done = _ok_validation(registry, checkpoint_id)
    if done is not None:
        # A re-run (the worker died or lost Redis after the validation was recorded):
        # validated exactly once; only make sure the promotion happened.
        is_best = update_best(registry, config, record, done.score if done.score is not None else -math.inf)
        log.info("checkpoint %d was already validated (validation %d); not validating again", checkpoint_id, done.id)
        return _summary(record, done.id, done.score, is_best, done.duration_s, done.metrics or {}, already=True)
    try:
        metrics, score, equity = _backtest(registry, config, record)
    except ValidationFailed as exc:
        _record_failure(registry, record, exc.reason, started)
        _no_retry()
        raise
    except Exception as exc:
        _record_failure(registry, record, f"{type(exc).__name__}: {exc}", started)
        raise  # transient: RQ retries

    duration = time.monotonic() - started
    validation_id = registry.add_validation(
        checkpoint_id,
        "ok",
        score=score,
        metrics=metrics.as_dict(),
        error=None,
        split=VALIDATION_SPLIT,
        duration_s=duration,
        equity=equity,
    )
    VALIDATIONS.labels(status="ok").inc()
    VALIDATION_DURATION.observe(duration)
    VALIDATION_SCORE.set(score)
    for name, value in metrics.as_dict().items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            VALIDATION_METRIC.labels(metric=name).set(value)
    is_best = update_best(registry, config, record, score)
    log.info(
        "checkpoint %d (run %s step %d): score %.4f, %d trades%s (%.1f s)",
        checkpoint_id,
        record.run_id,
        record.step,
        score,
        metrics.trades,
        ", new best" if is_best else "",
        duration,
    )
    return _summary(record, validation_id, score, is_best, duration, metrics.as_dict(), already=False)


def _ok_validation(registry: Registry, checkpoint_id: int) -> ValidationRecord | None:
    return next((v for v in registry.list_validations(checkpoint_id=checkpoint_id) if v.status == "ok"), None)


def _summary(
    record: CheckpointRecord,
    validation_id: int,
    score: float | None,
    is_best: bool,
    duration: float,
    metrics: dict[str, Any],
    *,
    already: bool,
) -> dict[str, Any]:
    return {
        "checkpoint_id": record.id,
        "run_id": record.run_id,
        "step": record.step,
        "validation_id": validation_id,
        "score": score,
        "is_best": is_best,
        "duration_s": round(duration, 3),
        "metrics": {key: metrics.get(key) for key in _SUMMARY},
        "already_validated": already,
    }


def _record_failure(registry: Registry, record: CheckpointRecord, reason: str, started: float) -> None:
    duration = time.monotonic() - started
    VALIDATIONS.labels(status="failed").inc()
    VALIDATION_DURATION.observe(duration)
    log.error("validation of checkpoint %d failed: %s", record.id, reason)
    try:
        registry.add_validation(
            record.id, "failed", score=None, metrics=None, error=reason, split=VALIDATION_SPLIT, duration_s=duration
        )
    except Exception:
        log.exception("cannot record the failed validation of checkpoint %d", record.id)


def _backtest(
    registry: Registry, config: Config, record: CheckpointRecord
) -> tuple[TradingMetrics, float, dict[str, Any]]:
    """Load, check and backtest the checkpoint; ValidationFailed for deterministic problems.
    Returns the metrics, the score and the downsampled equity curve."""
    from shared.data.store import UnknownSymbolError
    from shared.learning.checkpoint import CheckpointError, load_checkpoint
    from shared.market import open_market
    from shared.model.networks import StochasticMuZeroNet
    from shared.training import evaluate

    device = pick_device()
    try:
        ckpt = load_checkpoint(record.path, map_location="cpu")
    except CheckpointError as exc:
        raise ValidationFailed(record.id, str(exc)) from exc
    if ckpt.sha256 != record.sha256:
        raise ValidationFailed(
            record.id,
            f"checkpoint {record.path}: sha256 {ckpt.sha256[:16]}... differs from {record.sha256[:16]}... recorded in "
            "the registry: the file was replaced after it was registered",
        )
    try:
        model_config = ckpt.model_config()
    except ValueError as exc:
        raise ValidationFailed(record.id, f"checkpoint {record.path}: invalid model config ({exc})") from exc
    if model_config.window != config.env.window:
        raise ValidationFailed(
            record.id,
            f"checkpoint {record.path} has model.window {model_config.window} but the validator's env.window is "
            f"{config.env.window}: validate it with the config it was trained with",
        )
    model = StochasticMuZeroNet(model_config)
    try:
        model.load_state_dict(ckpt.state_dict)
    except RuntimeError as exc:
        raise ValidationFailed(
            record.id, f"checkpoint {record.path}: weights do not fit its model config ({exc})"
        ) from exc
    model.to(device).eval()

    run = registry.get_run(record.run_id)
    symbol = run.symbol if run is not None else config.pipeline.symbol
    try:
        market = open_market(config, symbol)
    except UnknownSymbolError as exc:
        raise ValidationFailed(record.id, f"no bars for {symbol}: {exc}") from exc

    with torch.inference_mode():
        result = evaluate(model, market, config, VALIDATION_SPLIT, device, chunks=config.pipeline.validation_chunks)
    # evaluate() scores a single trial; the deflated Sharpe must know how many
    # checkpoints of this run were tried, so the metrics are recomputed with n_trials.
    n_trials = max(1, registry.count_checkpoints(record.run_id))
    metrics = compute_metrics(
        result.trades.net_pips,
        result.bar_pnl,
        market.bars_per_year,
        trade_amddp1=result.trades.amddp1,
        n_trials=n_trials,
    )
    return metrics, quality_score(metrics, config), equity_curve(result.bar_pnl)


def equity_curve(bar_pnl: np.ndarray, points: int = EQUITY_POINTS) -> dict[str, Any]:
    """The cumulative pips after each decision bar, starting at 0, sampled at `points`
    evenly spaced bars (the first and last included): ``{"bars": N, "pips": [...]}``,
    point i at bar round(i * N / (len(pips) - 1)). Sampling keeps the shape, not every
    extreme: the exact drawdown is in the metrics."""
    equity = np.concatenate([[0.0], np.cumsum(np.asarray(bar_pnl, dtype=np.float64))])
    at = np.linspace(0, len(equity) - 1, min(points, len(equity))).round().astype(np.int64)
    return {"bars": len(equity) - 1, "pips": [round(float(v), 2) for v in equity[at]]}


def update_best(registry: Registry, config: Config, record: CheckpointRecord, score: float) -> bool:
    """Promote `record` if `score` beats the best so far (``shared.checkpoint_store``);
    True if it is (or already was) the best. Published through the running job's Redis
    connection, else the configured one."""
    job = get_current_job()
    client, own = (job.connection, False) if job is not None else (None, True)
    if client is None:
        url = resolve_redis_url(config.pipeline.redis_url)
        client = connect(url, socket_timeout=5.0) if url else None
    try:
        promotion = promote(registry, config, record, score=score, redis=client, keys=RedisKeys.from_config(config))
    except PromotionError as exc:
        raise ValidationFailed(record.id, exc.reason) from exc
    finally:
        if own and client is not None:
            client.close()
    if client is None and promotion.promoted:
        log.info("no Redis configured: new best %d not published (the API polls the registry)", record.id)
    return promotion.is_best
