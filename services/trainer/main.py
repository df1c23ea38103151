"""``microzero trainer``: episode stream -> replay -> learner -> checkpoints (ARCHITECTURE §7).

A thin entrypoint: the loop is ``shared.pipeline.trainer.run_trainer``. It resumes from
the newest checkpoint in ``pipeline.checkpoints_dir/<run_id>``. SIGINT or SIGTERM stops
it cleanly (a final checkpoint is saved and published).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading

from shared.config import Config


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event):
    """Set `stop` on SIGINT/SIGTERM while the block runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(args: argparse.Namespace, config: Config) -> int:
    from shared.cli import CommandError
    from shared.observability import serve_metrics
    from shared.pipeline.collector import pick_device
    from shared.pipeline.redis_conn import redis_url_from
    from shared.pipeline.trainer import run_trainer

    url = redis_url_from(config.pipeline.redis_url)
    if not url:
        raise CommandError(
            "no Redis configured: set pipeline.redis_url (MZ_PIPELINE__REDIS_URL) or REDIS_URL, "
            "or use `microzero up`, which starts an embedded one"
        )
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    device = pick_device(args.device)
    port = config.pipeline.trainer_metrics_port if args.metrics_port is None else args.metrics_port
    if port >= 0:
        try:
            port = serve_metrics(port)
        except OSError as exc:
            raise CommandError(f"cannot serve metrics on port {port} ({exc.strerror}); pass --metrics-port 0 for any free port")
        logging.getLogger(__name__).info("metrics on http://0.0.0.0:%d/metrics", port)
    stop = threading.Event()
    with _stop_on_signals(stop):
        stats = run_trainer(config, stop, args.max_steps, redis_url=url, device=device)
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
    parser.add_argument(
        "--metrics-port", type=int, default=None,
        help="Prometheus port (default pipeline.trainer_metrics_port; 0 = any free port; -1 = none)",
    )
    parser.set_defaults(func=_run)


def main(argv: list[str] | None = None) -> int:
    """``python -m services.trainer.main [--config FILE] [options]``: this service alone,
    without the rest of the ``microzero`` CLI (container entrypoints, tests)."""
    from shared.cli import CommandError
    from shared.config import load_config

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", help="JSON or YAML config file (default: $MZ_CONFIG)")
    known, rest = pre.parse_known_args(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m services.trainer.main", parents=[pre])
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args([*(["--config", known.config] if known.config else []), "trainer", *rest])
    try:
        return int(args.func(args, load_config(args.config)) or 0)
    except (CommandError, ValueError) as exc:
        print(f"trainer: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
