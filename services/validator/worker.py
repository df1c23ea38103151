"""The validator's RQ worker: works ``pipeline.validation_queue`` in-process, runs
nothing but the validation job, and rides out Redis outages and restarts.

Jobs run inside the worker process (``SimpleWorker``) rather than a forked child per
job: the Prometheus metrics a job updates must live in the process that serves
``/metrics``, and forking a process that has initialised torch's thread pools (or
CUDA) is unsafe. The job timeout still applies (SIGALRM in the worker).

**Allow-list.** RQ imports and calls whatever dotted name a job carries, so anyone who
can write to Redis could run code here. :class:`ValidationJob` resolves only
``services.validator.job.validate_checkpoint`` (and the pre-1.0 path of the same job,
``shared.transport.jobs.LEGACY_JOB_FUNCTIONS``) with exactly one integer argument and
no callbacks; any other job is refused before anything is imported and ends in RQ's
failed registry with the reason (``RefusedJob``), never retried.

**Faults** (see :func:`serve`):

* *Redis outage.* RQ's own loop quits on any Redis error outside its dequeue wait
  ("unhandled exception, quitting"), e.g. when a validation finishes while Redis is
  away. :func:`serve` then waits for Redis with backoff, hands the job that was running
  back to the front of the queue (:func:`release_abandoned`) and starts a fresh worker
  (whose RQ scheduler replaces the one the outage killed). The re-run is cheap: the job
  skips checkpoints the registry already holds an ``ok`` validation for.
* *Crash (SIGKILL, OOM).* RQ's abandoned-job path: while a job runs, a thread keeps its
  entry in RQ's started registry alive every ``pipeline.validator_heartbeat_s`` seconds
  with a TTL of three beats (RQ's ``SimpleWorker`` would hold it for the whole job
  timeout, 30 min), and registry maintenance runs on that same period, so the next
  validator finds the dead worker's job within about 30 s and ``StartedJobRegistry.
  cleanup`` retries it per its ``Retry`` (through RQ's scheduler, whose lock a killed
  scheduler holds for up to 61 s more). A crash counts as one attempt of
  ``Retry(max=validation_retries)``: a checkpoint that kills the validator every time
  cannot crash-loop it.
* *Hung Redis (SIGSTOP, a network partition).* The worker blocks on its queue for
  :data:`DEQUEUE_TIMEOUT_S` at a time and its client (``shared.transport.connection.
  connect``) times out after :data:`SOCKET_TIMEOUT_S`, connects within 3 s and
  health-checks idle connections, so a hung server costs a timeout and a worker restart,
  never RQ's default socket timeout (``worker_ttl`` − 5 s, ~415 s).
* *SIGTERM / SIGINT* during a validation hands the job back: the validation is
  interrupted, the job returns to the front of the queue (no retry consumed) and the
  process exits at once, so a stop never waits out a validation (~75 s) nor leaves a
  job "started". Idle, the worker simply stops, within about a second.

**Stopping the pub/sub listener.** RQ listens for its commands (``rq`` shutdown /
kill-horse / stop-job) on a pub/sub thread that polls every 60 s; RQ's teardown sends
``UNSUBSCRIBE`` and then stops that thread, and redis-py ≥ 8.2's
``PubSubWorkerThread.stop()`` joins it without a timeout. When the thread read the
``UNSUBSCRIBE`` reply before the stop flag was cleared, it went back to wait up to 60 s
for a subscription that never comes, and the worker's exit waited with it (a SIGTERM
took 60 s about half the time). Here the thread polls every :data:`PUBSUB_POLL_S` and
is joined with a timeout.
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from rq import SimpleWorker, get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.utils import now

from services.validator.job import validate_checkpoint
from shared.config import Config
from shared.transport.connection import REDIS_DOWN_ERRORS, Backoff, call_with_retry
from shared.transport.jobs import JOB_FUNCTION, LEGACY_JOB_FUNCTIONS, validation_queue

log = logging.getLogger(__name__)

DEQUEUE_TIMEOUT_S = 5  # one blocking dequeue (then heartbeat, maintenance, dequeue again)
SOCKET_TIMEOUT_S = 10.0  # > DEQUEUE_TIMEOUT_S: the blocking dequeue must not time out itself
PUBSUB_POLL_S = 1.0
PUBSUB_JOIN_S = 3.0

ALLOWED_JOB_FUNCTIONS = frozenset({JOB_FUNCTION, *LEGACY_JOB_FUNCTIONS})
_CALLBACKS = ("_success_callback_name", "_failure_callback_name", "_stopped_callback_name")


class RefusedJob(Exception):
    """A job outside the validator's allow-list; it was neither imported nor run."""


class JobHandedBack(BaseException):
    """Raised inside a running validation by SIGTERM/SIGINT. A BaseException, so the
    job's own ``except Exception`` does not record it as a failed validation."""


class ValidationJob(Job):
    """An RQ job that can only ever be ``validate_checkpoint(<int>)``."""

    def refusal(self) -> str | None:
        """Why this job must not run, or None. Reads only the job's data."""
        allowed = ", ".join(sorted(ALLOWED_JOB_FUNCTIONS))
        if self.func_name not in ALLOWED_JOB_FUNCTIONS:
            return f"job function {self.func_name!r} is not on the validator's allow-list ({allowed})"
        if self.instance is not None:
            return "jobs on a class instance are not allowed"
        callbacks = [getattr(self, name, None) for name in _CALLBACKS]
        if any(callbacks):
            return f"job callbacks are not allowed ({', '.join(str(c) for c in callbacks if c)})"
        args, kwargs = self.args, self.kwargs
        if kwargs or len(args) != 1 or not isinstance(args[0], int) or isinstance(args[0], bool):
            return f"arguments must be one integer checkpoint id, got args={args!r} kwargs={kwargs!r}"
        return None

    @property
    def func(self) -> Callable[..., Any]:
        reason = self.refusal()
        if reason is not None:
            self.retries_left = 0  # RQ reads this after the failure: retrying cannot make it acceptable
            log.error("refused job %s: %s", self.id, reason)
            raise RefusedJob(f"refused job {self.id}: {reason}; it was not run")
        return validate_checkpoint

    # Callbacks are never imported, whatever a job names (such jobs are refused above).
    @property
    def success_callback(self) -> None:
        return None

    @property
    def failure_callback(self) -> None:
        return None

    @property
    def stopped_callback(self) -> None:
        return None


class ValidationWorker(SimpleWorker):
    """``SimpleWorker`` that heartbeats during a job and hands its job back on a stop."""

    def __init__(self, *args: Any, heartbeat_s: int = 10, **kwargs: Any) -> None:
        kwargs.setdefault("maintenance_interval", 3 * heartbeat_s)  # abandoned jobs found this often
        super().__init__(*args, **kwargs)
        self.heartbeat_s = heartbeat_s
        self.stop_signalled = False
        self.last_dequeued: str | None = None
        self._handing_back: str | None = None

    @property
    def dequeue_timeout(self) -> int:
        # RQ blocks worker_ttl - 15 s (405 s) per dequeue and raises the client's socket
        # timeout above that (connection_timeout); a short block keeps the short timeout.
        return DEQUEUE_TIMEOUT_S

    @property
    def connection_timeout(self) -> int:
        return int(SOCKET_TIMEOUT_S)

    def subscribe(self) -> None:
        # RQ's own, but polling every PUBSUB_POLL_S instead of 60 s, so a stop is prompt.
        self.log.info("Worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(
            sleep_time=PUBSUB_POLL_S, daemon=True, exception_handler=self._pubsub_exception_handler
        )

    def unsubscribe(self) -> None:
        # RQ's order (UNSUBSCRIBE while the listener still reads, then stop it), but the
        # wait for the listener is bounded: it notices the stop flag within PUBSUB_POLL_S,
        # and one stuck on a hung Redis is a daemon thread that does not hold the exit.
        thread, pubsub = self.pubsub_thread, self.pubsub
        if thread is None or pubsub is None:
            return
        self.pubsub_thread = None
        self.log.info("Worker %s: unsubscribing from channel %s", self.name, self.pubsub_channel_name)
        try:
            pubsub.unsubscribe()
        finally:
            thread._running.clear()  # what PubSubWorkerThread.stop() does before its unbounded join
            thread.join(PUBSUB_JOIN_S)
            if not thread.is_alive():
                pubsub.close()

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        # Three missed beats and the job counts as abandoned (RQ's cleanup then retries it).
        return 3 * self.heartbeat_s

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        result = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        # Between this dequeue (job moved to the queue's intermediate list) and the job's
        # entry in the started registry, a Redis error strands the job; see release_abandoned.
        self.last_dequeued = result[0].id if result is not None else None
        return result

    def perform_job(self, job: Job, queue: Any, execution: Any) -> bool:
        done = threading.Event()
        beat = threading.Thread(target=self._beat, args=(job, execution, done), daemon=True, name="rq-heartbeat")
        beat.start()
        try:
            return super().perform_job(job, queue, execution)
        finally:
            done.set()
            beat.join(5)

    def _beat(self, job: Job, execution: Any, done: threading.Event) -> None:
        while not done.wait(self.heartbeat_s):
            try:
                self.maintain_heartbeats(job, execution)
            except REDIS_DOWN_ERRORS as exc:
                # The validation goes on; if the outage outlasts the TTL the job may be
                # re-run later, which then finds its validation recorded and skips.
                log.warning("validator: heartbeat of job %s failed (%s)", job.id, exc)
            except Exception:
                log.exception("validator: heartbeat of job %s failed", job.id)

    def request_stop(self, signum: int, frame: Any) -> None:
        self.stop_signalled = True
        job = get_current_job()  # set only while the job function itself runs
        if job is not None and self._handing_back is None:
            self._handing_back = job.id
            self._stop_requested = True
            self._shutdown_requested_date = now()  # a second signal within 1 s is RQ's duplicate
            signal.signal(signal.SIGINT, self.request_force_stop)
            signal.signal(signal.SIGTERM, self.request_force_stop)
            log.warning("validator: stop requested; interrupting job %s and handing it back to the queue", job.id)
            raise JobHandedBack(job.id)
        super().request_stop(signum, frame)

    def handle_job_failure(
        self, job: Job, queue: Any, started_job_registry: Any = None, exc_string: str = "", execution: Any = None
    ) -> None:
        if self._handing_back != job.id:
            super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)
            return
        self._handing_back = None
        hand_back(self, job, queue, execution)


def hand_back(worker: SimpleWorker, job: Job, queue: Any, execution: Any) -> None:
    """Return a job this worker started to the front of its queue, as if never started
    (no retry consumed: it was interrupted, it did not fail)."""
    with worker.connection.pipeline() as pipe:
        pipe.multi()  # one transaction (enqueue_job insists on MULTI before any command)
        worker.cleanup_execution(job, pipeline=pipe, execution=execution)
        queue.enqueue_job(job, pipeline=pipe, at_front=True)
        pipe.execute()
    log.warning("validator: job %s handed back to the front of %s", job.id, queue.name)


def build_worker(config: Config, redis_client: Any) -> ValidationWorker:
    """The RQ worker of the validation queue (JSON serializer, jobs run in-process)."""
    queue = validation_queue(redis_client, config, job_class=ValidationJob)
    return ValidationWorker(
        [queue],
        connection=redis_client,
        serializer=JSONSerializer,
        job_class=ValidationJob,
        heartbeat_s=config.pipeline.validator_heartbeat_s,
    )


def release_abandoned(worker: ValidationWorker) -> int:
    """Hand back the jobs a worker that quit on a Redis error was still running (only for
    a worker known dead: it quit in this process). Redis failed, not the job, so no retry
    is consumed; a job that had in fact finished is left alone. Also the job it had just
    dequeued when Redis failed, before the job counted as started: RQ would fail that job
    only after a minute in the queue's intermediate list, and then retry it through the
    scheduler. Returns how many."""
    released = 0
    queues = {queue.name: queue for queue in worker.queues}
    for execution in list(worker.executions.values()):
        try:
            job = worker.job_class.fetch(execution.job_id, connection=worker.connection, serializer=worker.serializer)
        except NoSuchJobError:
            continue
        if job.get_status(refresh=False) == JobStatus.STARTED and job.origin in queues:
            hand_back(worker, job, queues[job.origin], execution)
            released += 1
    worker.executions.clear()
    job_id, worker.last_dequeued = worker.last_dequeued, None
    for queue in queues.values() if job_id else ():
        if job_id in queue.intermediate_queue.get_job_ids() and job_id not in queue.started_job_registry:
            with worker.connection.pipeline() as pipe:
                pipe.multi()
                pipe.lrem(queue.intermediate_queue_key, 1, job_id)
                pipe.lrem(queue.key, 0, job_id)  # never twice in the queue
                pipe.lpush(queue.key, job_id)
                pipe.execute()
            log.warning(
                "validator: job %s, dequeued when Redis failed, returned to the front of %s", job_id, queue.name
            )
            released += 1
    return released


def release_scheduler_locks(worker: ValidationWorker) -> None:
    """Free the scheduler locks of a worker that quit on a Redis error. Its scheduler
    process could not release them with Redis away, so the next worker's scheduler would
    wait out their TTL (61 s) and retries of failed jobs (``Retry(interval=...)``) with it."""
    scheduler = worker.scheduler
    if scheduler is None or (scheduler._process is not None and scheduler._process.is_alive()):
        return  # none, or still running: its locks are its own
    scheduler.release_locks()  # only the locks that scheduler still owns (its name)


def _quietly(action: Callable[[], Any]) -> None:
    try:
        action()
    except Exception as exc:  # noqa: BLE001 - best-effort teardown of a worker that already quit
        log.debug("validator: ignored during teardown: %s", exc)


def serve(config: Config, client: Any, *, burst: bool = False, logging_level: str = "INFO") -> None:
    """Work the validation queue until SIGINT/SIGTERM (``burst``: until it is empty).

    When RQ's loop quits on an error (in practice: Redis went away), wait for Redis with
    backoff, hand back the job that worker was running (:func:`release_abandoned`) and
    start a fresh worker; restarts back off too, so a persistent bug cannot spin.
    """
    restarts = Backoff(base=1.0, cap=30.0)
    stop = threading.Event()
    while True:
        worker = build_worker(config, client)
        started = time.monotonic()
        try:
            worker.work(burst=burst, with_scheduler=True, logging_level=logging_level)
        except REDIS_DOWN_ERRORS as exc:  # RQ's teardown writes to Redis too
            log.warning("validator: worker %s quit while Redis is unreachable (%s)", worker.name, exc)
        if worker.stop_signalled or burst:
            return
        _quietly(worker.unsubscribe)
        # RQ left its signal handlers installed; while we wait, a signal just stops us.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        if time.monotonic() - started > 60:
            restarts.reset()
        log.warning("validator: worker %s quit unexpectedly; starting a new one once Redis answers", worker.name)
        if stop.wait(restarts.next_delay()):
            return
        try:
            call_with_retry(client.ping, service="validator", stop_event=stop, backoff=Backoff(base=0.5, cap=10.0))
        except REDIS_DOWN_ERRORS:
            return  # stopped while Redis was away
        _quietly(functools.partial(release_scheduler_locks, worker))
        try:
            released = release_abandoned(worker)
        except REDIS_DOWN_ERRORS as exc:
            log.warning("validator: could not hand back the interrupted job (%s); RQ's cleanup will retry it", exc)
        else:
            if released:
                log.warning("validator: handed back the job worker %s was running", worker.name)
        if stop.is_set():
            return
