"""Every Prometheus metric of microzero, defined in one place (``microzero_`` prefix,
base units, ``_total`` counters), so dashboards and services agree on names.

Each service process calls :func:`serve_metrics` once to expose ``/metrics``; the API
mounts :func:`prometheus_client.make_asgi_app` instead.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

# --- collector
EPISODES_PRODUCED = Counter("microzero_episodes_produced_total", "Episodes pushed to the stream", ["collector"])
ENV_STEPS = Counter("microzero_env_steps_total", "Environment steps played", ["collector"])
SEARCH_LATENCY = Histogram(
    "microzero_search_latency_seconds",
    "Wall time of one batched search",
    ["collector"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
COLLECTOR_MODEL_VERSION = Gauge(
    "microzero_collector_model_version", "Weights version the collector plays", ["collector"]
)
REDIS_RECONNECTS = Counter("microzero_redis_reconnects_total", "Reconnections after Redis was unreachable", ["service"])
PENDING_EPISODES = Gauge(
    "microzero_collector_pending_episodes", "Finished episodes held while Redis is away", ["collector"]
)
EPISODES_DROPPED = Counter(
    "microzero_collector_episodes_dropped_total",
    "Finished episodes discarded: Redis away and the pending queue full",
    ["collector"],
)

# --- trainer
EPISODES_CONSUMED = Counter("microzero_episodes_consumed_total", "Episodes inserted into the replay buffer")
EPISODES_REJECTED = Counter("microzero_episodes_rejected_total", "Stream entries refused (undecodable or inconsistent)")
LEARNER_STEPS = Counter("microzero_learner_steps_total", "Learner updates")
LOSS = Gauge("microzero_loss", "Latest value of each loss component", ["component"])
LEARNING_RATE = Gauge("microzero_learning_rate", "Adam's step size at the latest learner step")
REPLAY_POSITIONS = Gauge("microzero_replay_buffer_positions", "Positions in the replay buffer")
STREAM_LAG = Gauge("microzero_stream_lag_entries", "Stream entries not yet delivered to the trainer group")
CHECKPOINTS_SAVED = Counter("microzero_checkpoints_saved_total", "Checkpoints written")

# --- validator
VALIDATIONS = Counter("microzero_validations_total", "Validation jobs finished", ["status"])
VALIDATION_SCORE = Gauge("microzero_validation_score", "Quality score of the latest validated checkpoint")
VALIDATION_METRIC = Gauge("microzero_validation_metric", "Trading metrics of the latest validation", ["metric"])
BEST_SCORE = Gauge("microzero_best_score", "Quality score of the best checkpoint so far")
VALIDATION_DURATION = Histogram(
    "microzero_validation_duration_seconds",
    "Wall time of one validation job",
    buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1800),
)

# --- api
API_REQUESTS = Counter("microzero_api_requests_total", "HTTP requests", ["method", "route", "status"])
API_LATENCY = Histogram(
    "microzero_api_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
# How well concurrent requests share a search: a mean batch near the number of clients
# means each search answers everyone waiting; near 1, requests queue behind each other.
API_INFERENCE_BATCH = Histogram(
    "microzero_api_inference_batch_size",
    "Observations answered by one batched search of the API",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
API_INFERENCE_SECONDS = Histogram(
    "microzero_api_inference_seconds",
    "Wall time of one batched search of the API",
    buckets=(0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)


def serve_metrics(port: int, host: str = "127.0.0.1") -> int:
    """Expose this process's metrics over HTTP on `host`:`port` (0 = any free port); returns
    the port. Loopback by default: metrics name internals, so exposing them is a choice."""
    server, _thread = start_http_server(port, addr=host)
    return server.server_port
