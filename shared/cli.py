"""The ``microzero`` command line: one sub-command per job, each with ``--help``.

Each area of the library registers its own sub-commands, so this file only wires them.
The installed ``microzero`` command is ``services.cli:main``: these library commands
plus the services' (collector, trainer, validator, api, up), which live on top of the
library and are therefore wired from there (the library never imports a service).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from shared.config import load_config

# Modules exposing ``register(subparsers)``; each adds its sub-commands with a ``func``
# default taking ``(args, config)`` and returning an exit code.
LIBRARY_COMMANDS = (
    "shared.data.cli",
    "shared.backtest_cli",
    "shared.train_cli",
    "shared.model.cli",
    "shared.bench",
    "shared.evaluation.cli",
    "shared.analysis.cli",
    "shared.experiments.cli",
)


class CommandError(Exception):
    """A user-facing failure: printed without a traceback, exit code 2."""


def build_parser(modules: Sequence[str] = LIBRARY_COMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="microzero", description="Stochastic MuZero trader for forex bars.")
    parser.add_argument("--config", help="JSON or YAML config file (default: $MZ_CONFIG)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in modules:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None, modules: Sequence[str] = LIBRARY_COMMANDS) -> int:
    parser = build_parser(modules)
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        return int(args.func(args, config) or 0)
    except (CommandError, ValueError, FileNotFoundError) as exc:
        print(f"microzero {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of our output (e.g. `| head`) went away: not a failure of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
