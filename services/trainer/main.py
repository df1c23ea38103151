"""``microzero trainer``: episode stream -> replay -> learner -> checkpoints (ARCHITECTURE §7).

A thin entrypoint: the loop is ``services.trainer.loop.Trainer``. It resumes from
the newest checkpoint in ``pipeline.checkpoints_dir/<run_id>``. SIGINT or SIGTERM stops
it cleanly (a final checkpoint is saved and published).
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
    from services.trainer.loop import Trainer
    from shared.device import pick_device
    from shared.transport.connection import connect

    url = require_redis_url(config)
    setup_logging()
    device = pick_device(args.device)
    start_metrics(args.metrics_port, config.pipeline.trainer_metrics_port, config.pipeline.metrics_host)
    stop = threading.Event()
    with stop_on_signals(stop):
        trainer = Trainer(config, stop, client=connect(url), max_steps=args.max_steps, device=device)
        stats = trainer.run()
    print(
        f"trainer: step {stats.steps}, {stats.inserted} episodes inserted, {stats.duplicates} duplicates, "
        f"{stats.rejected} rejected, {len(stats.checkpoints)} checkpoints",
        flush=True,
    )
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "trainer",
        help="learn from the Redis episode stream, writing and publishing checkpoints",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto = cuda if available")
    parser.add_argument(
        "--max-steps", type=int, default=None, help="stop once the learner reaches this step (resumed steps count)"
    )
    add_metrics_port_argument(parser, "trainer_metrics_port")
    parser.set_defaults(func=_run)


def main(argv: list[str] | None = None) -> int:
    return run_standalone("trainer", register, argv)


if __name__ == "__main__":
    sys.exit(main())
