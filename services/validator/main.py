"""``microzero validator``: the RQ worker that validates checkpoints (ARCHITECTURE §7).

A thin entrypoint: the job is ``services.validator.job.validate_checkpoint``, the
worker ``services.validator.worker.build_worker``. It works the
``pipeline.validation_queue`` queue (JSON serializer) with the RQ scheduler on, so
retries of failed jobs fire after their interval. ``--burst`` exits once the queue is
empty. SIGINT/SIGTERM: an idle worker stops; a running validation is interrupted and
its job handed back to the front of the queue, so a stop takes seconds, never a whole
validation. Redis outages are ridden out (the worker reconnects and carries on).

Jobs run inside the worker process; only the validation job is ever run (see
``services.validator.worker``).
"""

from __future__ import annotations

import argparse
import os
import sys

from services.common import (
    add_metrics_port_argument,
    require_redis_url,
    run_standalone,
    setup_logging,
    start_metrics,
)
from shared.config import Config


def _run(args: argparse.Namespace, config: Config) -> int:
    import redis

    from services.validator.worker import SOCKET_TIMEOUT_S, serve
    from shared.cli import CommandError
    from shared.transport.connection import connect

    url = require_redis_url(config)
    setup_logging()
    start_metrics(args.metrics_port, config.pipeline.validator_metrics_port, config.pipeline.metrics_host)
    # Short socket/connect timeouts and health checks (not RQ's ~415 s): a hung Redis
    # costs a timeout and a worker restart (services.validator.worker), never minutes.
    client = connect(url, socket_timeout=SOCKET_TIMEOUT_S)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise CommandError(f"cannot reach Redis at {url}: {exc}") from exc
    if getattr(args, "config", None):
        # Jobs read their config with load_config(), i.e. from $MZ_CONFIG and MZ_*.
        os.environ["MZ_CONFIG"] = os.path.abspath(args.config)
    serve(config, client, burst=args.burst)
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
