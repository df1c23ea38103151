"""The RQ validation queue: what the trainer enqueues and the validator works.

Jobs name their function by dotted path, as RQ does. The validator's job lives in its
service (:data:`JOB_FUNCTION`); jobs queued by an older version name the old path
(:data:`LEGACY_JOB_FUNCTIONS`) and the validator's worker maps those onto the same
function (``services.validator.worker.ValidationJob``), so a queue filled before an
upgrade drains after it. The library only knows the names, never imports the service.
"""

from __future__ import annotations

from typing import Any

from rq import Queue, Retry
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from shared.config import Config

JOB_FUNCTION = "services.validator.job.validate_checkpoint"
LEGACY_JOB_FUNCTIONS = ("shared.pipeline.validation.validate_checkpoint",)
RESULT_TTL_S = 7 * 24 * 3600  # finished jobs (their small result dict) stay a week in Redis
FAILURE_TTL_S = 30 * 24 * 3600  # failed jobs stay a month in the failed registry
RETRY_INTERVALS_S = [5, 30]
_ACTIVE = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED, JobStatus.CREATED}


def validation_queue(redis: Any, config: Config, job_class: type[Job] | None = None) -> Queue:
    """The ``pipeline.validation_queue`` queue (JSON serializer: no pickle)."""
    return Queue(config.pipeline.validation_queue, connection=redis, serializer=JSONSerializer, job_class=job_class)


def job_id_for(checkpoint_id: int) -> str:
    return f"validate-{int(checkpoint_id)}"


def enqueue_validation(redis: Any, config: Config, checkpoint_id: int) -> Job:
    """Queue ``validate_checkpoint(checkpoint_id)`` on ``pipeline.validation_queue``.

    The job id is ``validate-<checkpoint_id>``, so calling this again (the trainer does
    after a Redis hiccup) returns the job already waiting, scheduled or running instead of
    queueing a duplicate; a finished or failed job of that id is replaced (run again; the job itself skips a
    checkpoint that already has an ``ok`` validation).
    JSON serializer (no pickle), ``job_timeout = validation_timeout_s``, and
    ``Retry(max=validation_retries, interval=[5, 30])`` for transient failures
    (``validation_retries = 0``: no retry).
    """
    pipe = config.pipeline
    queue = validation_queue(redis, config)
    job_id = job_id_for(checkpoint_id)
    retry = Retry(max=pipe.validation_retries, interval=RETRY_INTERVALS_S) if pipe.validation_retries > 0 else None
    for _ in range(3):
        try:
            existing = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
        except NoSuchJobError:
            existing = None
        if existing is not None:
            if existing.get_status(refresh=False) in _ACTIVE:
                return existing
            existing.delete()
        try:
            return queue.enqueue(
                JOB_FUNCTION,
                int(checkpoint_id),
                job_timeout=pipe.validation_timeout_s,
                retry=retry,
                job_id=job_id,
                result_ttl=RESULT_TTL_S,
                failure_ttl=FAILURE_TTL_S,
                description=f"validate checkpoint {int(checkpoint_id)}",
                unique=True,
            )
        except DuplicateJobError:
            continue  # enqueued concurrently by someone else: return that one
    raise RuntimeError(f"could not enqueue {job_id}: the job keeps being replaced concurrently")
