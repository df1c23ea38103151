"""Keeps ``microzero up``'s services running: one that exits is started again.

Each service is a child process in its own session (Ctrl-C reaches ``up`` only, which
stops the children in order). When one exits, whatever the reason (a crash, SIGKILL,
the OOM killer), it is started again after an exponential backoff: the n-th restart in
a row waits ``min(cap_s, base_s * 2**(n-1))`` seconds (1, 2, 4, ... 60 s), and a service
that stayed up for ``stable_s`` starts from ``base_s`` again. So a one-off crash costs a
second, and a service that fails at start does not spin. Every exit and restart is
logged, and counted in :meth:`Supervisor.records` (published in Redis by ``up``, shown
by the API's ``/status``). Only :meth:`Supervisor.stop` stops them for good.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Service:
    name: str
    command: list[str]
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0  # since up started
    failures: int = 0  # exits in a row that came before stable_s
    restart_at: float | None = None  # monotonic time of the next start, while down
    last_exit_code: int | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def record(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "pid": self.process.pid if self.running and self.process is not None else None,
            "restarts": self.restarts,
            "last_exit_code": self.last_exit_code,
        }


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"code {code}"


@dataclass
class Supervisor:
    """Starts `services` (name -> command) and restarts any that exits; `log` receives
    (service name, line) for the children's output and ("up", message) for its own."""

    services: dict[str, list[str]]
    env: dict[str, str]
    log: Callable[[str, str], None]
    base_s: float = 1.0
    cap_s: float = 60.0
    stable_s: float = 60.0
    cwd: str | None = None
    table: dict[str, Service] = field(init=False)
    stopped: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.table = {name: Service(name, command) for name, command in self.services.items()}

    def start_all(self) -> None:
        for service in self.table.values():
            self._start(service)

    def _start(self, service: Service) -> None:
        service.process = subprocess.Popen(
            service.command,
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,  # Ctrl-C reaches up only; up stops the children in order
        )
        service.started_at, service.restart_at = time.monotonic(), None
        stream = service.process.stdout
        threading.Thread(target=self._relay, args=(service.name, stream), daemon=True).start()

    def _relay(self, name: str, stream: Any) -> None:
        for line in iter(stream.readline, ""):
            self.log(name, line.rstrip())

    def poll(self) -> bool:
        """Notice exits, start what is due; True if a service exited or was restarted."""
        if self.stopped:
            return False
        changed = False
        now = time.monotonic()
        for service in self.table.values():
            process = service.process
            if process is not None and process.poll() is not None:
                uptime = now - service.started_at
                service.failures = 1 if uptime >= self.stable_s else service.failures + 1
                delay = min(self.cap_s, self.base_s * 2 ** (service.failures - 1))
                service.last_exit_code, service.process = process.returncode, None
                _signal_group(process, signal.SIGKILL)  # what it left in its group (RQ's scheduler) goes too
                service.restart_at = now + delay
                self.log(
                    "up",
                    f"{service.name} exited ({_describe(process.returncode)}) after {uptime:.1f} s; "
                    f"restarting in {delay:.0f} s",
                )
                changed = True
            if service.process is None and service.restart_at is not None and now >= service.restart_at:
                service.restarts += 1
                self._start(service)
                pid = service.process.pid if service.process is not None else None
                self.log("up", f"{service.name} restarted (pid {pid}, restart {service.restarts})")
                changed = True
        return changed

    def records(self) -> dict[str, dict[str, Any]]:
        return {name: service.record() for name, service in self.table.items()}

    def summary(self) -> str:
        """``restarts trainer 1, validator 2`` (empty when nothing was restarted)."""
        counts = [f"{s.name} {s.restarts}" for s in self.table.values() if s.restarts]
        down = [s.name for s in self.table.values() if not s.running]
        parts = ([f"restarts {', '.join(counts)}"] if counts else []) + ([f"down {', '.join(down)}"] if down else [])
        return " | ".join(parts)

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGINT every service (each stops cleanly: the trainer saves a final
        checkpoint, the validator hands its job back), then SIGKILL whatever is still
        running after `grace_s`. Signals go to each child's process group, so helpers
        it spawned (RQ's scheduler) stop with it."""
        self.stopped = True
        running = [s.process for s in self.table.values() if s.process is not None and s.process.poll() is None]
        for process in running:
            _signal_group(process, signal.SIGINT)
        deadline = time.monotonic() + grace_s
        for process in running:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
