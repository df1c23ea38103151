"""What ``POST /v1/act`` runs: the served model and a micro-batching inference thread.

The observations, the model loading and the decisions themselves are the library's
(:mod:`shared.serving`), the code :class:`shared.agent.Agent` runs in-process; this
module only adds what serving many clients needs:

* :class:`ModelHolder` keeps the served model; a swap replaces one immutable
  :class:`ServedModel` reference under a lock, so a batch in flight finishes on the
  model it started with and every answer names the checkpoint that produced it.
* :class:`InferenceEngine` owns the only thread that runs the model. Requests queue
  their observations (one, or a batch request's many); the thread takes everything
  waiting (up to ``max_batch`` observations; a larger batch request runs alone) and
  answers it with one :func:`shared.serving.decide.decide` call -- one batched greedy
  search (with no root noise each root's result depends only on its own inputs). This
  makes inference thread-safe without a lock around torch, and concurrent clients share
  the search's per-simulation overhead instead of queueing behind a lock one by one.
  Measured on 2 shared CPU cores, default model, 15 simulations: one search of B=1 takes
  17 ms, B=8 19 ms, B=32 27 ms. The thread uses one intra-op torch thread by default:
  with two, the same searches took 115 / 540 / 1760 ms on a busy machine (OpenMP
  threads spinning against other processes), and small batches gain nothing from more.
* Gathering: clients that call in step (a bot per symbol, each calling again as soon as
  it is answered) fall into two groups that alternate, each searched while the other is
  being parsed: 8 such clients got batches of 4 (``microzero bench pipeline``). So the
  thread remembers how many requests were outstanding when each of its last
  ``RECENT_SEARCHES`` searches ended (the batch plus those queued meanwhile), and before a
  search with fewer than the most of them it waits for the rest, at most ``gather_s``
  (``pipeline.api_gather_s``). With 5 ms the same clients got batches of ~7 and ~340
  requests/s instead of ~285 (2 idle cores). A client alone is not waited for (after a
  burst, for the next few searches at most).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future

import numpy as np
import torch
from fastapi import HTTPException

from shared.actions import NUM_ACTIONS, Action
from shared.observability import API_INFERENCE_BATCH, API_INFERENCE_SECONDS
from shared.serving.decide import Decision, decide
from shared.serving.model import ServedModel
from shared.serving.observation import Observation

log = logging.getLogger(__name__)


class NoModelError(RuntimeError):
    """No checkpoint is loaded yet (-> 503)."""


class OverloadedError(RuntimeError):
    """Too many requests already wait for the inference thread (-> 503)."""


class ModelHolder:
    """The currently served model; swaps are atomic reference replacements."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: ServedModel | None = None

    @property
    def current(self) -> ServedModel | None:
        return self._current

    def swap(self, served: ServedModel) -> ServedModel | None:
        with self._lock:
            previous, self._current = self._current, served
        log.info(
            "serving checkpoint %s (step %d, %s) on %s",
            served.checkpoint_id,
            served.step,
            served.path,
            served.device,
        )
        return previous


_Item = tuple[list[Observation], Future]
RECENT_SEARCHES = 4  # how many searches back the engine looks for clients calling in step


class InferenceEngine:
    """A single inference thread running batched greedy searches for queued observations;
    `gather_s`: the longest it waits, before a search, for the requests (not observations)
    it expects from clients calling in step (0 = never)."""

    def __init__(
        self,
        holder: ModelHolder,
        max_batch: int = 32,
        torch_threads: int | None = 1,
        max_pending: int = 1024,
        gather_s: float = 0.005,
    ) -> None:
        self.holder, self.max_batch, self.torch_threads = holder, max_batch, torch_threads
        self.max_pending, self.gather_s = max_pending, gather_s
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._outstanding: deque[int] = deque([1], maxlen=RECENT_SEARCHES)  # requests, at each search's end
        self.batches = 0
        self.requests = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="api-inference", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None
        # Fail anything still waiting.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[1].set_exception(RuntimeError("the API is shutting down"))

    def submit(self, observations: Sequence[Observation]) -> Future:
        """A future of the :class:`Decision` list of `observations`, in order, all from
        one batched search (a request's observations are never split)."""
        if self._thread is None:
            raise RuntimeError("the inference engine is not running")
        if self._queue.qsize() >= self.max_pending:
            raise OverloadedError(f"{self.max_pending} requests are already waiting for inference; retry shortly")
        future: Future = Future()
        self._queue.put((list(observations), future))
        return future

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        if self.torch_threads:
            # Per thread under OpenMP: the rest of the process keeps its setting.
            torch.set_num_threads(self.torch_threads)
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch, size = [item], len(item[0])
            deadline, expected = time.monotonic() + self.gather_s, max(self._outstanding)
            while size < self.max_batch:
                wait = deadline - time.monotonic() if len(batch) < expected else 0.0
                try:
                    more = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:  # stop after this batch
                    self._queue.put(None)
                    break
                if size + len(more[0]) > self.max_batch:  # keep it for the next search
                    self._requeue_front(more)
                    break
                batch.append(more)
                size += len(more[0])
            batch = [(o, f) for o, f in batch if f.set_running_or_notify_cancel()]
            if batch:
                self._answer(batch)
                # Clients in step: those just answered will call again while the queued are searched.
                self._outstanding.append(min(len(batch) + self._queue.qsize(), self.max_batch))

    def _requeue_front(self, item: _Item) -> None:
        with self._queue.mutex:
            self._queue.queue.appendleft(item)
            self._queue.not_empty.notify()

    def _answer(self, batch: list[_Item]) -> None:
        served = self.holder.current  # one model for the whole batch, even if a swap lands now
        if served is None:
            for _, future in batch:
                future.set_exception(NoModelError("no checkpoint is loaded yet"))
            return
        flat = [o for observations, _ in batch for o in observations]
        started = time.perf_counter()
        try:
            decisions = decide(served, flat)
        except Exception as exc:
            log.exception("inference failed for a batch of %d", sum(len(o) for o, _ in batch))
            for _, future in batch:
                future.set_exception(exc)
            return
        API_INFERENCE_SECONDS.observe(time.perf_counter() - started)
        API_INFERENCE_BATCH.observe(len(flat))
        self.batches += 1
        start = 0
        for observations, future in batch:
            self.requests += 1
            future.set_result(decisions[start : start + len(observations)])  # list[Decision]
            start += len(observations)


def act_names(mask: np.ndarray) -> list[str]:
    return [Action(i).name for i in range(NUM_ACTIONS) if mask[i]]


async def decisions(engine: InferenceEngine, observations: Sequence[Observation]) -> list[Decision]:
    """Await the engine's decisions; an overload or a missing model is a 503."""
    try:
        return await asyncio.wrap_future(engine.submit(observations))
    except OverloadedError as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": "1"}) from exc
    except NoModelError as exc:
        raise HTTPException(503, f"no model is loaded yet: {exc}") from exc


def require_model(holder: ModelHolder) -> ServedModel:
    """The served model, or a 503 saying none is loaded."""
    served = holder.current
    if served is None:
        raise HTTPException(503, "no model is loaded yet: the registry has no loadable best checkpoint")
    return served
