"""Checkpoint retention: a trainer's checkpoint folder stays bounded on disk.

After each registered checkpoint the trainer deletes the files of its folder except:

* the newest ``pipeline.checkpoint_keep_last`` (the one to resume from among them);
* the best checkpoint's original (``best.pt`` and ``best/history`` are copies, pruned
  by the promotion path to ``pipeline.best_history``);
* one whose newest 'ok' validation beats the best's score (about to be promoted);
* the newest ``pipeline.checkpoint_keep_unvalidated`` not validated yet, so a lagging
  validator still finds them (beyond that, disk wins: their validation fails as
  "file does not exist");
* files the registry does not know (it only deletes what it can account for).

Deleted checkpoints are marked ``pruned_at`` in the registry first, then unlinked (with
their sidecars); a crash in between is finished by the next round. It all runs under
the best folder's lock, so nothing is deleted while the promotion path copies it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from shared.checkpoint_store import best_lock, best_score
from shared.config import Config
from shared.learning.checkpoint import checkpoint_files, sidecar_path
from shared.registry import CheckpointRecord, Registry

log = logging.getLogger(__name__)


def prune_checkpoints(registry: Registry, config: Config, directory: str | Path) -> list[Path]:
    """Apply the retention rules to `directory`; returns the files deleted."""
    pipe = config.pipeline
    with best_lock(config):
        files = checkpoint_files(directory)
        records = registry.checkpoints_by_paths([str(p) for p in files])
        best, incumbent = best_score(registry)
        keep = set(files[: pipe.checkpoint_keep_last])
        unvalidated = [p for p in files if str(p) in records and not _validated(records[str(p)])]
        keep.update(unvalidated[: pipe.checkpoint_keep_unvalidated])
        for path in files:
            record = records.get(str(path))
            if record is None or (best is not None and record.id == best.id) or _beats(record, incumbent):
                keep.add(path)
        doomed = [(path, records[str(path)]) for path in files if path not in keep]
        registry.mark_pruned([record.id for _, record in doomed])
        for path, _ in doomed:
            path.unlink(missing_ok=True)  # the checkpoint before its sidecar, the reverse of writing
            sidecar_path(path).unlink(missing_ok=True)
    if doomed:
        log.info(
            "retention: deleted %d checkpoint(s) of %s (steps %s); %d kept",
            len(doomed),
            directory,
            ", ".join(str(record.step) for _, record in doomed),
            len(files) - len(doomed),
        )
    return [path for path, _ in doomed]


def _validated(record: CheckpointRecord) -> bool:
    return record.latest_validation is not None and record.latest_validation.status == "ok"


def _beats(record: CheckpointRecord, incumbent: float) -> bool:
    v = record.latest_validation
    return v is not None and v.status == "ok" and v.score is not None and v.score > incumbent
