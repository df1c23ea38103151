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
from collections.abc import Callable, Hashable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, TypeVar

import torch

Key = TypeVar("Key", bound=Hashable)


def run_all(
    fn: Callable[..., Any],
    calls: Mapping[Key, tuple],
    jobs: int,
    started: Callable[[Key], None] = lambda key: None,
) -> Iterator[tuple[Key, Any]]:
    """Yield ``(key, fn(*calls[key]))`` for every call, in the order they finish;
    ``started(key)`` is called here as that call begins.

    ``jobs`` 1 (or a single call) runs them in this process, one after another; more
    runs up to that many at once in worker processes. No more are handed to the workers
    than are running, so when one fails (or Ctrl-C stops them) nothing starts after it:
    the runs already going finish (their files stay, so a re-run reuses them) and the
    error is raised."""
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    if jobs == 1 or len(calls) <= 1:
        for key, args in calls.items():
            started(key)
            yield key, fn(*args)
        return
    pool = ProcessPoolExecutor(
        max_workers=min(jobs, len(calls)),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=torch.set_num_threads,
        initargs=(torch.get_num_threads(),),
        max_tasks_per_child=1,
    )
    waiting = iter(calls.items())
    running: dict[Future, Key] = {}

    def submit_next() -> None:
        item = next(waiting, None)
        if item is not None:
            key, args = item
            started(key)
            running[pool.submit(fn, *args)] = key

    try:
        for _ in range(min(jobs, len(calls))):
            submit_next()
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                key = running.pop(future)
                result = future.result()  # raises a failed run's error before another starts
                submit_next()
                yield key, result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
