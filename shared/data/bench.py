"""``microzero bench import``: rows/s and peak memory of importing an M1 bar file.

The import runs in a fresh child process and reports its own peak resident set: Linux's
``VmHWM`` from ``/proc/self/status``, which belongs to the process image and so starts
afresh at exec. (``ru_maxrss`` would not do: Linux carries it over from the parent
through fork and exec, so a child of a 1 GB parent reports at least 1 GB.) The peak
right after the child's imports (Python, numpy, DuckDB) is reported alongside, for scale.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np


def write_m1_csv(path: Path, rows: int, seed: int = 0) -> None:
    """``rows`` consecutive M1 bars of a random walk as a generic CSV (written by DuckDB)."""
    rng = np.random.default_rng(seed)
    close = np.round(1.1 + np.cumsum(rng.normal(0, 1e-4, rows)), 5)
    open_ = np.r_[1.1, close[:-1]]
    bars = {
        "i": np.arange(rows, dtype=np.int64),
        "open": open_,
        "high": np.round(np.maximum(open_, close) + 5e-5, 5),
        "low": np.round(np.minimum(open_, close) - 5e-5, 5),
        "close": close,
        "volume": rng.integers(0, 500, rows).astype(np.int64),
    }
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    con.register("bars", bars)
    con.execute(
        "COPY (SELECT strftime(TIMESTAMP '2015-01-01' + to_minutes(i), '%Y-%m-%d %H:%M:%S') AS time, "
        f"open, high, low, close, volume FROM bars ORDER BY i) TO '{path}' (FORMAT csv, HEADER)"
    )
    con.close()


def peak_rss_mib() -> float:
    """This process's peak resident set in MiB (VmHWM; ru_maxrss where there is no /proc)."""
    try:
        with open("/proc/self/status") as fh:
            line = next(x for x in fh if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024  # kB
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, bytes on macOS


def _child(path: str, db: str) -> None:
    """Import ``path`` into a new store at ``db``; print the timings and memory as JSON."""
    from shared.data.store import BarStore

    before = peak_rss_mib()
    stages: dict[str, float] = {}
    started = time.perf_counter()

    def mark(stage: str) -> None:
        stages.setdefault(stage, time.perf_counter())

    summary = BarStore(db).import_file(path, "BENCH", on_stage=mark)
    ended = time.perf_counter()
    marks = [stages["read"], stages["parse"], stages["store"], ended]
    print(
        json.dumps(
            {
                "rows": summary.rows_inserted,
                "seconds": ended - started,
                "stage_seconds": {name: b - a for name, a, b in zip(("read", "parse", "store"), marks, marks[1:])},
                "peak_rss_mib": peak_rss_mib(),
                "rss_after_imports_mib": before,
            }
        )
    )


def bench_import(rows: int = 1_000_000, seed: int = 0) -> dict:
    with tempfile.TemporaryDirectory(prefix="mz-bench-import-") as folder:
        path, db = Path(folder) / "m1.csv", Path(folder) / "bars.duckdb"
        write_m1_csv(path, rows, seed)
        size = path.stat().st_size
        done = subprocess.run(
            [sys.executable, "-m", "shared.data.bench", str(path), str(db)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"the import child failed:\n{done.stderr[-2000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return report | {
        "file_mib": size / 2**20,
        "rows_per_s": report["rows"] / report["seconds"],
        "memory": "VmHWM of a child process that only imports",
    }


def format_import(r: dict) -> str:
    stages = ", ".join(f"{name} {s:.2f} s" for name, s in r["stage_seconds"].items())
    return (
        f"import of {r['rows']:,} generated M1 rows ({r['file_mib']:.0f} MiB CSV) into a new store\n"
        f"  {r['seconds']:.2f} s = {r['rows_per_s']:,.0f} rows/s ({stages})\n"
        f"  peak memory {r['peak_rss_mib']:.0f} MiB ({r['memory']}; "
        f"{r['rss_after_imports_mib']:.0f} MiB of it is Python, numpy and DuckDB loaded)"
    )


if __name__ == "__main__":
    _child(*sys.argv[1:3])
