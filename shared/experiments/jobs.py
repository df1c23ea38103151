"""Runs of an experiment side by side (``microzero experiment --jobs N``).

Each run is already independent (its own folder, seed and files), so up to N of them
train at once, each in a fresh process on as many torch threads as this one. With one
torch thread a seed gives the same numbers in any process
(tests/shared/test_experiments.py compares both ways).

Spawned, not forked: a forked child would inherit this process's torch thread pools
and any CUDA context. A worker process serves one run and exits, so a run's memory is
returned before the next starts. The arguments travel to the workers pickled through a
pipe this process opened; nothing from the network is unpickled.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

import torch


def run_all(
    fn: Callable[..., Any],
    calls: Sequence[tuple],
    jobs: int,
    started: Callable[[int], None] = lambda i: None,
) -> Iterator[tuple[int, Any]]:
    """Yield ``(i, fn(*calls[i]))`` for every call, in the order they finish; ``started(i)``
    is called here as call i begins.

    ``jobs`` 1 (or a single call) runs them in this process, one after another; more
    runs up to that many at once in worker processes. No more are handed to the workers
    than are running, so when one fails (or Ctrl-C stops them) nothing starts after it:
    the runs already going finish (their files stay, so a re-run reuses them) and the
    error is raised."""
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    if jobs == 1 or len(calls) <= 1:
        for i, args in enumerate(calls):
            started(i)
            yield i, fn(*args)
        return
    pool = ProcessPoolExecutor(
        max_workers=min(jobs, len(calls)),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=torch.set_num_threads,
        initargs=(torch.get_num_threads(),),
        max_tasks_per_child=1,
    )
    waiting = iter(range(len(calls)))
    running: dict[Future, int] = {}

    def submit_next() -> None:
        i = next(waiting, None)
        if i is not None:
            started(i)
            running[pool.submit(fn, *calls[i])] = i

    try:
        for _ in range(min(jobs, len(calls))):
            submit_next()
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                i = running.pop(future)
                result = future.result()  # raises a failed run's error before another starts
                submit_next()
                yield i, result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
