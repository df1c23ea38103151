"""The validator's RQ worker: works ``pipeline.validation_queue`` in-process.

Jobs run inside the worker process (``SimpleWorker``) rather than a forked child per
job: the Prometheus metrics a job updates must live in the process that serves
``/metrics``, and forking a process that has initialised torch's thread pools (or
CUDA) is unsafe. The job timeout still applies (SIGALRM in the worker).

Compatibility: jobs queued by an older version name the job function by its old path,
``shared.pipeline.validation.validate_checkpoint`` (``shared.transport.jobs.
LEGACY_JOB_FUNCTIONS``). :class:`ValidationJob` resolves those names to
:func:`services.validator.job.validate_checkpoint`, so such a queue still drains.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rq import SimpleWorker
from rq.job import Job
from rq.serializers import JSONSerializer

from services.validator.job import validate_checkpoint
from shared.config import Config
from shared.transport.jobs import LEGACY_JOB_FUNCTIONS, validation_queue


class ValidationJob(Job):
    """An RQ job that also runs jobs naming the job function's pre-services path."""

    @property
    def func(self) -> Callable[..., Any] | None:
        if self.func_name in LEGACY_JOB_FUNCTIONS:
            return validate_checkpoint
        return super().func


def build_worker(config: Config, redis_client: Any) -> SimpleWorker:
    """The RQ worker of the validation queue (JSON serializer, jobs run in-process)."""
    queue = validation_queue(redis_client, config, job_class=ValidationJob)
    return SimpleWorker([queue], connection=redis_client, serializer=JSONSerializer, job_class=ValidationJob)
