"""``microzero up``'s supervisor with stand-in services (tiny Python processes): a
service that exits is restarted with exponential backoff and counted; stop() ends all."""

from __future__ import annotations

import os
import signal
import sys
import time

from services.supervise import Supervisor
from tests.helpers import wait_for


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_exited_services_restart_with_backoff_and_stop_ends_all():
    lines: list[tuple[str, str]] = []
    supervisor = Supervisor(
        {
            "crasher": _python("print('up', flush=True); raise SystemExit(3)"),
            "steady": _python("import time; print('up', flush=True); time.sleep(60)"),
        },
        env=dict(os.environ),
        log=lambda name, line: lines.append((name, line)),
        base_s=0.1,
        cap_s=0.4,
        stable_s=30.0,
    )
    supervisor.start_all()
    steady = supervisor.table["steady"]
    try:
        started = time.monotonic()
        while time.monotonic() - started < 2.5:
            supervisor.poll()
            time.sleep(0.02)
        crasher = supervisor.table["crasher"]
        # Delays 0.1, 0.2, 0.4, 0.4, ... (capped) plus the start-up of each process.
        assert 2 <= crasher.restarts <= 10, crasher.restarts
        assert crasher.last_exit_code == 3 and crasher.failures >= crasher.restarts
        delays = [line for name, line in lines if name == "up" and line.startswith("crasher exited (code 3)")]
        assert len(delays) >= 3 and delays[0].endswith("restarting in 0 s")  # 0.1 s, rounded
        assert ("crasher", "up") in lines  # children's output is relayed under their name
        assert steady.running and steady.restarts == 0

        pid = steady.process.pid
        os.kill(pid, signal.SIGKILL)

        def steady_restarted() -> bool:
            # poll() is also True when the crasher exits again, so wait for steady's own restart.
            supervisor.poll()
            return steady.restarts == 1 and steady.running

        wait_for(steady_restarted, timeout=5)
        assert steady.running and steady.restarts == 1 and steady.process.pid != pid
        assert steady.last_exit_code == -signal.SIGKILL
        assert any(line.startswith("steady exited (killed by SIGKILL)") for name, line in lines)
        records = supervisor.records()
        assert records["steady"] == {"running": True, "pid": steady.process.pid, "restarts": 1, "last_exit_code": -9}
        assert "restarts " in supervisor.summary() and "steady 1" in supervisor.summary()
    finally:
        supervisor.stop(grace_s=5)
    assert not any(s.running for s in supervisor.table.values())
    time.sleep(0.5)
    assert not supervisor.poll()  # stopped services are not restarted
    assert not any(s.running for s in supervisor.table.values())
