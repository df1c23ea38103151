"""``microzero validator``: the RQ worker that validates checkpoints (ARCHITECTURE §7).

A thin entrypoint: the job is ``shared.pipeline.validation.validate_checkpoint``. It
works the ``pipeline.validation_queue`` queue (JSON serializer) with the RQ scheduler
on, so retries of failed jobs fire after their interval. ``--burst`` exits once the
queue is empty. SIGINT/SIGTERM: RQ's warm shutdown (the current validation finishes;
a second signal aborts it).

Jobs run inside the worker process (``SimpleWorker``) rather than a forked child per
job: the Prometheus metrics a job updates must live in the process that serves
``/metrics``, and forking a process that has initialised torch's thread pools (or
CUDA) is unsafe. The job timeout still applies (SIGALRM in the worker).
"""

from __future__ import annotations

import argparse
import os
import sys

from services.common import add_metrics_port_argument, require_redis_url, run_standalone, setup_logging, start_metrics
from shared.config import Config


def build_worker(config: Config, redis_client):
    """The RQ worker of the validation queue (JSON serializer, jobs run in-process)."""
    from rq import SimpleWorker
    from rq.serializers import JSONSerializer

    from shared.pipeline.validation import validation_queue

    return SimpleWorker([validation_queue(redis_client, config)], connection=redis_client, serializer=JSONSerializer)


def _run(args: argparse.Namespace, config: Config) -> int:
    import redis

    from shared.cli import CommandError

    url = require_redis_url(config)
    setup_logging()
    start_metrics(args.metrics_port, config.pipeline.validator_metrics_port)
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise CommandError(f"cannot reach Redis at {url}: {exc}")
    if getattr(args, "config", None):
        # Jobs read their config with load_config(), i.e. from $MZ_CONFIG and MZ_*.
        os.environ["MZ_CONFIG"] = os.path.abspath(args.config)
    worker = build_worker(config, client)
    worker.work(burst=args.burst, with_scheduler=True, logging_level="INFO")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "validator",
        help="RQ worker: backtest checkpoints on the validation split and keep the best",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--burst", action="store_true", help="exit once the validation queue is empty")
    add_metrics_port_argument(parser, "validator_metrics_port")
    parser.set_defaults(func=_run)


def main(argv: list[str] | None = None) -> int:
    return run_standalone("validator", register, argv)


if __name__ == "__main__":
    sys.exit(main())
