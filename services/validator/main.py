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
import logging
import sys

from shared.config import Config


def build_worker(config: Config, redis_client):
    """The RQ worker of the validation queue (JSON serializer, jobs run in-process)."""
    from rq import SimpleWorker
    from rq.serializers import JSONSerializer

    from shared.pipeline.validation import validation_queue

    return SimpleWorker([validation_queue(redis_client, config)], connection=redis_client, serializer=JSONSerializer)


def _run(args: argparse.Namespace, config: Config) -> int:
    import os

    import redis

    from shared.cli import CommandError
    from shared.observability import serve_metrics

    url = config.pipeline.redis_url or os.environ.get("REDIS_URL")
    if not url:
        raise CommandError(
            "no Redis configured: set pipeline.redis_url (MZ_PIPELINE__REDIS_URL) or REDIS_URL, "
            "or use `microzero up`, which starts an embedded one"
        )
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    port = config.pipeline.validator_metrics_port if args.metrics_port is None else args.metrics_port
    if port >= 0:
        try:
            port = serve_metrics(port)
        except OSError as exc:
            raise CommandError(f"cannot serve metrics on port {port} ({exc.strerror}); pass --metrics-port 0 for any free port")
        logging.getLogger(__name__).info("metrics on http://0.0.0.0:%d/metrics", port)
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
    parser.add_argument(
        "--metrics-port", type=int, default=None,
        help="Prometheus port (default pipeline.validator_metrics_port; 0 = any free port; -1 = none)",
    )
    parser.set_defaults(func=_run)


def main(argv: list[str] | None = None) -> int:
    """``python -m services.validator.main [--config FILE] [options]``: this service alone,
    without the rest of the ``microzero`` CLI (container entrypoints, tests)."""
    from shared.cli import CommandError
    from shared.config import load_config

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", help="JSON or YAML config file (default: $MZ_CONFIG)")
    known, rest = pre.parse_known_args(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m services.validator.main", parents=[pre])
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args([*(["--config", known.config] if known.config else []), "validator", *rest])
    try:
        return int(args.func(args, load_config(args.config)) or 0)
    except (CommandError, ValueError) as exc:
        print(f"validator: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
