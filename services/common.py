"""What every service entrypoint does the same way: find Redis, log, serve /metrics,
stop on signals, and run alone as ``python -m services.<name>.main``."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Callable

from shared.config import Config


def require_redis_url(config: Config) -> str:
    """The Redis URL of the pipeline (config, else $REDIS_URL); a clear error if none."""
    from shared.cli import CommandError
    from shared.transport.connection import resolve_redis_url

    url = resolve_redis_url(config.pipeline.redis_url)
    if not url:
        raise CommandError(
            "no Redis configured: set pipeline.redis_url (MZ_PIPELINE__REDIS_URL) or REDIS_URL, "
            "or use `microzero up`, which starts an embedded one"
        )
    return url


def setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def add_metrics_port_argument(parser: argparse.ArgumentParser, config_field: str) -> None:
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help=f"Prometheus port (default pipeline.{config_field}; 0 = any free port; -1 = none)",
    )


def start_metrics(requested: int | None, configured: int, host: str = "127.0.0.1") -> None:
    """Serve /metrics on `host`:`requested` (None: `configured`); negative means none.
    `host` is ``pipeline.metrics_host``: loopback unless a container must be scraped."""
    from shared.cli import CommandError
    from shared.observability import serve_metrics

    port = configured if requested is None else requested
    if port < 0:
        return
    try:
        port = serve_metrics(port, host)
    except OSError as exc:
        raise CommandError(
            f"cannot serve metrics on {host}:{port} ({exc.strerror}); pass --metrics-port 0 for any free port"
        ) from exc
    logging.getLogger(__name__).info("metrics on http://%s:%d/metrics", host, port)


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event):
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


def run_standalone(command: str, register: Callable, argv: list[str] | None) -> int:
    """``python -m services.<command>.main [--config FILE] [options]``: one service
    without the rest of the ``microzero`` CLI (container entrypoints, tests)."""
    from shared.cli import CommandError
    from shared.config import load_config

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", help="JSON or YAML config file (default: $MZ_CONFIG)")
    known, rest = pre.parse_known_args(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog=f"python -m services.{command}.main", parents=[pre])
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args([*(["--config", known.config] if known.config else []), command, *rest])
    try:
        return int(args.func(args, load_config(args.config)) or 0)
    except (CommandError, ValueError, FileNotFoundError) as exc:
        print(f"{command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
