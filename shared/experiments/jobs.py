"""Runs of an experiment side by side (``microzero experiment --jobs N``).

Each run is already independent (its own folder, seed and files), so N of them go to N
fresh processes, each on as many torch threads as this one. A run's result does not
depend on where it ran: one torch thread and a seed give the same numbers in any
process (tests/shared/test_experiments.py compares both ways).

Spawned, not forked: a forked child would inherit this process's torch thread pools
and any CUDA context. The arguments travel to the workers pickled through a pipe this
process opened; nothing from the network is unpickled.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

import torch


def run_all(fn: Callable[..., Any], calls: Sequence[tuple], jobs: int) -> Iterator[tuple[int, Any]]:
    """Yield ``(i, fn(*calls[i]))`` for every call, in the order they finish.

    ``jobs`` 1 runs them here, one after another; more runs them in that many processes.
    If one fails, the runs already going finish (their files stay, so a re-run reuses
    them), the ones not started are dropped, and the error is raised."""
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    if jobs == 1 or len(calls) <= 1:
        for i, args in enumerate(calls):
            yield i, fn(*args)
        return
    pool = ProcessPoolExecutor(
        max_workers=min(jobs, len(calls)),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=torch.set_num_threads,
        initargs=(torch.get_num_threads(),),
    )
    try:
        futures = {pool.submit(fn, *args): i for i, args in enumerate(calls)}
        for future in as_completed(futures):
            yield futures[future], future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
