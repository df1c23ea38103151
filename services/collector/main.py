"""``microzero collector``: self-play episodes pushed to the Redis stream (ARCHITECTURE §7).

A thin entrypoint: the loop is ``services.collector.loop.Collector``. SIGINT or
SIGTERM stops it cleanly (the current batch is abandoned, finished episodes flushed).
"""

from __future__ import annotations

import argparse
import sys
import threading

from services.common import (
    add_metrics_port_argument,
    require_redis_url,
    run_standalone,
    setup_logging,
    start_metrics,
    stop_on_signals,
)
from shared.config import Config


def _run(args: argparse.Namespace, config: Config) -> int:
    from services.collector.loop import Collector
    from shared.device import pick_device
    from shared.transport.connection import connect

    url = require_redis_url(config)
    setup_logging()
    device = pick_device(args.device)
    start_metrics(args.metrics_port, config.pipeline.collector_metrics_port, config.pipeline.metrics_host)
    stop = threading.Event()
    with stop_on_signals(stop):
        collector = Collector(
            config, stop, client=connect(url), collector_id=args.id, max_episodes=args.max_episodes, device=device
        )
        stats = collector.run()
    print(
        f"collector {stats.collector_id}: {stats.played} episodes played, {stats.pushed} pushed, "
        f"{stats.dropped} dropped, model version {stats.model_version}",
        flush=True,
    )
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "collector",
        help="play self-play episodes and push them to the Redis episode stream",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto = cuda if available")
    parser.add_argument(
        "--id", default=None, help="collector id (default hostname-pid; must be unique among live collectors)"
    )
    parser.add_argument("--max-episodes", type=int, default=None, help="stop after pushing this many episodes")
    add_metrics_port_argument(parser, "collector_metrics_port")
    parser.set_defaults(func=_run)


def main(argv: list[str] | None = None) -> int:
    return run_standalone("collector", register, argv)


if __name__ == "__main__":
    sys.exit(main())
