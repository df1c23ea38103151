"""The inference thread's batching policy, with the search replaced by a recorder: which
requests share a search, how long a client alone can be kept waiting, and that stopping
interrupts a gather."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from services.api.inference import InferenceEngine, ModelHolder


class RecordingEngine(InferenceEngine):
    """Answers each batch after `search_s`, recording how many requests it held."""

    def __init__(self, gather_s: float, search_s: float) -> None:
        super().__init__(ModelHolder(), max_batch=32, gather_s=gather_s)
        self.search_s, self.sizes = search_s, []

    def _answer(self, batch) -> None:
        self.sizes.append(len(batch))
        time.sleep(self.search_s)
        for observations, future in batch:
            future.set_result([None] * len(observations))


def clients_in_step(engine: InferenceEngine, clients: int, calls: int) -> None:
    """`clients` threads, each calling again as soon as it is answered (after ~1 ms of
    "parsing", staggered by client, as the event loop would stagger them)."""

    def client(k: int) -> None:
        for _ in range(calls):
            time.sleep(0.0005 * (k + 1))
            engine.submit([k]).result(timeout=10)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@contextlib.contextmanager
def running(engine: InferenceEngine) -> Iterator[InferenceEngine]:
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()


def lone_calls(engine: InferenceEngine, calls: int) -> float:
    """Seconds one client takes for `calls` requests, each sent once the last is answered."""
    started = time.monotonic()
    for i in range(calls):
        engine.submit([i]).result(timeout=10)
    return time.monotonic() - started


def test_clients_in_step_share_one_search():
    with running(RecordingEngine(gather_s=0.05, search_s=0.005)) as engine:
        clients_in_step(engine, clients=4, calls=30)
    later = engine.sizes[5:]  # once the engine has seen all four in flight at once
    assert sum(later) / len(later) > 3.5, engine.sizes


def test_after_a_burst_a_lone_client_waits_a_few_times_at_most():
    with running(RecordingEngine(gather_s=0.2, search_s=0.0)) as engine:
        clients_in_step(engine, clients=4, calls=5)
        elapsed = lone_calls(engine, 10)
    assert elapsed < 1.0  # RECENT_SEARCHES gather waits (0.2 s each) at most, not one per call (2 s)


def test_stop_during_a_gather_answers_the_batch_and_returns():
    engine = RecordingEngine(gather_s=5.0, search_s=0.0)
    engine._outstanding.append(3)  # as if three clients had been calling in step
    engine.start()
    waiting = engine.submit(["alone"])
    time.sleep(0.2)  # the thread is gathering for the two that never come
    started = time.monotonic()
    engine.stop()
    assert time.monotonic() - started < 2.0
    assert waiting.result(timeout=1) == [None]


def test_a_lone_client_is_never_waited_for():
    with running(RecordingEngine(gather_s=1.0, search_s=0.0)) as engine:
        elapsed = lone_calls(engine, 20)  # no client has called in step yet: nothing to gather for
    assert engine.sizes == [1] * 20
    assert elapsed < 1.0  # one gather wait alone would take 1 s
