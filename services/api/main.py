"""``microzero api``: serve the HTTP API (services.api.app) with uvicorn. No logic lives here."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "api",
        help="serve the HTTP API: status, registry, /v1/act inference, /metrics",
        description="Serve the microzero HTTP API with uvicorn (status page at /, docs at /docs).",
    )
    parser.add_argument("--host", default=None, help="bind address (default: config pipeline.api_host)")
    parser.add_argument("--port", type=int, default=None, help="port (default: config pipeline.api_port)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, config) -> int:
    import uvicorn

    from services.api.app import create_app

    host = args.host or config.pipeline.api_host
    port = config.pipeline.api_port if args.port is None else args.port
    uvicorn.run(create_app(config), host=host, port=port, log_level=getattr(args, "log_level", "info"))
    return 0
