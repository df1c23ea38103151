"""The installed ``microzero`` command: the library's commands plus the services'.

``microzero collector | trainer | validator | api | up`` come from here; everything
else (data, backtest, train, evaluate, ...) is registered by the library
(``shared.cli.LIBRARY_COMMANDS``).
"""

from __future__ import annotations

import argparse
import sys

from shared.cli import LIBRARY_COMMANDS
from shared.cli import build_parser as _build_parser
from shared.cli import main as _main

SERVICE_COMMANDS = (
    "services.collector.main",
    "services.trainer.main",
    "services.validator.main",
    "services.api.main",
    "services.up",
)
COMMANDS = LIBRARY_COMMANDS + SERVICE_COMMANDS


def build_parser() -> argparse.ArgumentParser:
    return _build_parser(COMMANDS)


def main(argv: list[str] | None = None) -> int:
    return _main(argv, COMMANDS)


if __name__ == "__main__":
    sys.exit(main())
