"""Validation of checkpoints: the quality score, the RQ job, and keeping the best.

The trainer records each checkpoint in the SQL registry and calls
:func:`enqueue_validation`; a validator (``microzero validator``, an RQ worker) runs
:func:`validate_checkpoint`, which backtests the checkpoint greedily over the *whole*
validation split (``shared.training.evaluate``), stores the metrics and the score, and,
when the score beats the best so far, copies the file to ``best_dir/best.pt`` (plus a
history copy), flags it with ``registry.set_best`` and publishes ``{checkpoint_id,
path}`` on the Redis channel ``mz:best`` so the API hot-swaps.

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
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from rq import Queue, Retry, get_current_job
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from shared.config import Config, PipelineConfig, load_config
from shared.learning.checkpoint import write_checkpoint_bytes
from shared.metrics import TradingMetrics, compute_metrics
from shared.observability import (
    BEST_SCORE,
    VALIDATION_DURATION,
    VALIDATION_METRIC,
    VALIDATION_SCORE,
    VALIDATIONS,
)
from shared.registry import CheckpointRecord, Registry

log = logging.getLogger(__name__)

JOB_FUNCTION = "shared.pipeline.validation.validate_checkpoint"
BEST_CHANNEL = "mz:best"  # the API subscribes here (shared.api.app)
BEST_FILE = "best.pt"
HISTORY_DIR = "history"
RESULT_TTL_S = 7 * 24 * 3600  # finished jobs (their small result dict) stay a week in Redis
FAILURE_TTL_S = 30 * 24 * 3600  # failed jobs stay a month in the failed registry
RETRY_INTERVALS_S = [5, 30]
VALIDATION_SPLIT = "validation"
_ACTIVE = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED, JobStatus.CREATED}
_SUMMARY = (
    "trades", "win_rate", "expectancy", "total_pips", "profit_factor", "sqn", "amddp1_per_trade",
    "max_drawdown_pips", "sharpe", "deflated_sharpe",
)


class ValidationFailed(Exception):
    """A checkpoint cannot be validated, and retrying will not change that."""

    def __init__(self, checkpoint_id: int, reason: str) -> None:
        super().__init__(f"validation of checkpoint {checkpoint_id} failed: {reason}")
        self.checkpoint_id, self.reason = checkpoint_id, reason


# --------------------------------------------------------------------------- the score


def quality_score(metrics: TradingMetrics | Mapping[str, Any], config: Config | PipelineConfig) -> float:
    """The quality score of a validated checkpoint; higher is better. THE definition.

    ``score = score_sqn_weight * SQN + score_amddp1_weight * AMDDP1_per_trade / 10``

    * SQN — Van Tharp's System Quality Number of the trades (``TradingMetrics.sqn``:
      sqrt(min(N, 100)) * mean / std of the net pips per trade);
    * AMDDP1 per trade — mean net pips per trade minus 0.01 x the drawdown accumulated
      during the trade (``TradingMetrics.amddp1_per_trade``); divided by 10 so that
      a few pips per trade weigh about as much as one unit of SQN.
    * No trades -> ``-inf``: a checkpoint that never trades is never the best.
    * With trades, an undefined SQN (one trade, or all trades equal) counts as 0, and so
      does an undefined AMDDP1 per trade.

    The weights are ``pipeline.score_sqn_weight`` / ``pipeline.score_amddp1_weight``
    (both 1.0 by default). `metrics` is a :class:`TradingMetrics` or its ``as_dict()``
    (where infinities are the strings "inf"/"-inf").
    """
    pipe = config.pipeline if isinstance(config, Config) else config
    values = metrics.as_dict() if isinstance(metrics, TradingMetrics) else metrics
    trades = int(values.get("trades") or 0)
    if trades <= 0:
        return -math.inf
    sqn = _number(values.get("sqn"))
    amddp1 = _number(values.get("amddp1_per_trade"))
    return pipe.score_sqn_weight * sqn + pipe.score_amddp1_weight * amddp1 / 10.0


def _number(value: Any) -> float:
    """A metric as a float; undefined (None/NaN) -> 0."""
    if value is None:
        return 0.0
    value = float(value)  # also parses "inf" / "-inf"
    return 0.0 if math.isnan(value) else value


# --------------------------------------------------------------------------- enqueueing


def validation_queue(redis, config: Config) -> Queue:
    return Queue(config.pipeline.validation_queue, connection=redis, serializer=JSONSerializer)


def job_id_for(checkpoint_id: int) -> str:
    return f"validate-{int(checkpoint_id)}"


def enqueue_validation(redis, config: Config, checkpoint_id: int) -> Job:
    """Queue ``validate_checkpoint(checkpoint_id)`` on ``pipeline.validation_queue``.

    The job id is ``validate-<checkpoint_id>``, so calling this again (the trainer does
    after a Redis hiccup) returns the job already waiting, scheduled or running instead of
    queueing a duplicate; a finished or failed job of that id is replaced (validated again).
    JSON serializer (no pickle), ``job_timeout = validation_timeout_s``, and
    ``Retry(max=validation_retries, interval=[5, 30])`` for transient failures
    (``validation_retries = 0``: no retry).
    """
    pipe = config.pipeline
    queue = validation_queue(redis, config)
    job_id = job_id_for(checkpoint_id)
    retry = Retry(max=pipe.validation_retries, interval=RETRY_INTERVALS_S) if pipe.validation_retries > 0 else None
    for _ in range(3):
        try:
            existing = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
        except NoSuchJobError:
            existing = None
        if existing is not None:
            if existing.get_status(refresh=False) in _ACTIVE:
                return existing
            existing.delete()
        try:
            return queue.enqueue(
                JOB_FUNCTION,
                int(checkpoint_id),
                job_timeout=pipe.validation_timeout_s,
                retry=retry,
                job_id=job_id,
                result_ttl=RESULT_TTL_S,
                failure_ttl=FAILURE_TTL_S,
                description=f"validate checkpoint {int(checkpoint_id)}",
                unique=True,
            )
        except DuplicateJobError:
            continue  # enqueued concurrently by someone else: return that one
    raise RuntimeError(f"could not enqueue {job_id}: the job keeps being replaced concurrently")


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
    try:
        metrics, score = _backtest(registry, config, record)
    except ValidationFailed as exc:
        _record_failure(registry, record, exc.reason, started)
        _no_retry()
        raise
    except Exception as exc:
        _record_failure(registry, record, f"{type(exc).__name__}: {exc}", started)
        raise  # transient: RQ retries

    duration = time.monotonic() - started
    validation_id = registry.add_validation(
        checkpoint_id, "ok", score=score, metrics=metrics.as_dict(), error=None, split=VALIDATION_SPLIT,
        duration_s=duration,
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
        checkpoint_id, record.run_id, record.step, score, metrics.trades, ", new best" if is_best else "", duration,
    )
    summary = metrics.as_dict()
    return {
        "checkpoint_id": checkpoint_id,
        "run_id": record.run_id,
        "step": record.step,
        "validation_id": validation_id,
        "score": score,
        "is_best": is_best,
        "duration_s": round(duration, 3),
        "metrics": {key: summary[key] for key in _SUMMARY},
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


def _backtest(registry: Registry, config: Config, record: CheckpointRecord) -> tuple[TradingMetrics, float]:
    """Load, check and backtest the checkpoint; ValidationFailed for deterministic problems."""
    from shared.data.store import UnknownSymbolError
    from shared.learning.checkpoint import CheckpointError, load_checkpoint
    from shared.model.networks import StochasticMuZeroNet
    from shared.training import evaluate

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
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
        raise ValidationFailed(record.id, f"checkpoint {record.path}: weights do not fit its model config ({exc})") from exc
    model.to(device).eval()

    run = registry.get_run(record.run_id)
    symbol = run.symbol if run is not None else config.pipeline.symbol
    try:
        market = _load_market(config, symbol)
    except UnknownSymbolError as exc:
        raise ValidationFailed(record.id, f"no bars for {symbol}: {exc}") from exc

    with torch.inference_mode():
        result = evaluate(model, market, config, VALIDATION_SPLIT, device, chunks=config.pipeline.validation_chunks)
    # evaluate() scores a single trial; the deflated Sharpe must know how many
    # checkpoints of this run were tried, so the metrics are recomputed with n_trials.
    n_trials = max(1, registry.count_checkpoints(record.run_id))
    metrics = compute_metrics(
        result.trades.net_pips, result.bar_pnl, market.bars_per_year, trade_amddp1=result.trades.amddp1,
        n_trials=n_trials,
    )
    return metrics, quality_score(metrics, config)


def _load_market(config: Config, symbol: str):
    """The run's bars (the bundled EURUSD sample is imported if EURUSD is missing)."""
    from shared.data.sample import ensure_sample
    from shared.data.store import BarStore
    from shared.market import load_market

    symbol = symbol.upper()
    store = BarStore(config.data.db_path)
    ensure_sample(store, symbol)
    return load_market(config, symbol, store)


# --------------------------------------------------------------------------- the best


def best_score(registry: Registry) -> tuple[CheckpointRecord | None, float]:
    """The flagged best checkpoint and the score of its newest 'ok' validation
    (``-inf`` if there is no best, or it was never validated successfully, e.g. promoted
    by hand before validation)."""
    best = registry.best_checkpoint()
    if best is None:
        return None, -math.inf
    for validation in registry.list_validations(limit=1000, checkpoint_id=best.id):
        if validation.status == "ok" and validation.score is not None:
            return best, float(validation.score)
    return best, -math.inf


def update_best(registry: Registry, config: Config, record: CheckpointRecord, score: float) -> bool:
    """Make `record` the best checkpoint if `score` beats the best so far; True if it is
    (or already was) the best.

    Strictly greater wins (ties keep the incumbent); ``-inf`` (no trades) never wins.
    Under an exclusive lock on ``best_dir/.best.lock`` (validators sharing best_dir take
    turns): copy the verified bytes to ``best_dir/best.pt`` and
    ``best_dir/history/<run>-<step>.pt`` (each with a ``.sha256`` sidecar, written
    atomically: temp file + ``os.replace``), prune the history to
    ``pipeline.best_history`` files, ``registry.set_best``; then publish on ``mz:best``.
    """
    pipe = config.pipeline
    best_dir = Path(pipe.best_dir).resolve()
    with _locked(best_dir / ".best.lock"):
        best, incumbent = best_score(registry)
        if best is not None and best.id == record.id:
            if math.isfinite(score):
                BEST_SCORE.set(score)
            return True
        if not (score > incumbent):
            if math.isfinite(incumbent):
                BEST_SCORE.set(incumbent)
            return False
        data = Path(record.path).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != record.sha256:
            raise ValidationFailed(
                record.id, f"checkpoint {record.path} changed after validation (sha256 {digest[:16]}...)"
            )
        best_path = best_dir / BEST_FILE
        history = best_dir / HISTORY_DIR
        history_path = history / f"{_safe_name(record.run_id)}-{record.step:09d}.pt"
        write_checkpoint_bytes(history_path, data, digest)
        _prune_history(history, pipe.best_history, keep=history_path)
        write_checkpoint_bytes(best_path, data, digest)
        registry.set_best(record.id, str(best_path))
        BEST_SCORE.set(score)
    log.info("checkpoint %d (run %s step %d) is the new best: score %.4f > %.4f",
             record.id, record.run_id, record.step, score, incumbent)
    publish_best(config, record.id, str(best_path))
    return True


def publish_best(config: Config, checkpoint_id: int, path: str) -> bool:
    """PUBLISH ``{"checkpoint_id", "path"}`` on :data:`BEST_CHANNEL`, through the running
    job's Redis connection, else ``pipeline.redis_url`` / ``$REDIS_URL``. Best effort:
    False (logged) without Redis; the API also polls the registry."""
    message = json.dumps({"checkpoint_id": int(checkpoint_id), "path": path})
    job = get_current_job()
    client, own = (job.connection, False) if job is not None else (None, True)
    if client is None:
        url = config.pipeline.redis_url or os.environ.get("REDIS_URL")
        if not url:
            log.info("no Redis configured: new best %d not published (the API polls the registry)", checkpoint_id)
            return False
        import redis

        client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=3)
    try:
        client.publish(BEST_CHANNEL, message)
        return True
    except Exception as exc:  # noqa: BLE001 -- the best is recorded; publishing is a courtesy
        log.warning("cannot publish the new best on %s: %s", BEST_CHANNEL, exc)
        return False
    finally:
        if own:
            client.close()


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "run"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)




def _prune_history(history: Path, keep_count: int, keep: Path) -> None:
    """Delete the oldest history copies (and sidecars) beyond `keep_count`; never `keep`."""
    copies = sorted(history.glob("*.pt"), key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)
    kept = [keep] + [p for p in copies if p != keep][: max(0, keep_count - 1)]
    for path in copies:
        if path not in kept:
            path.unlink(missing_ok=True)
            Path(f"{path}.sha256").unlink(missing_ok=True)
