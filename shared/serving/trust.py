"""Which checkpoint files may be served (by the API and by ``Agent.load("best")``).

Anyone who can write to Redis can publish on the best channel, so an announcement is
only a hint that the best changed; the file served must be one the *registry* records
(a registered id), lying inside the configured folders (``pipeline.checkpoints_dir``
or ``pipeline.best_dir``, after resolving symlinks), and its bytes must hash to the
sha256 the registry recorded (checked by ``load_served_model(expected_sha256=...)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.config import Config


def checkpoint_roots(config: Config) -> tuple[Path, ...]:
    """The folders checkpoints may be loaded from, resolved."""
    return tuple(Path(folder).resolve() for folder in (config.pipeline.checkpoints_dir, config.pipeline.best_dir))


def confined(path: str | Path, roots: tuple[Path, ...]) -> Path | None:
    """`path` resolved (symlinks and ``..`` followed) if it lies inside one of `roots`, else None."""
    resolved = Path(path).resolve()
    return resolved if any(resolved.is_relative_to(root) for root in roots) else None


def trusted_files(record: Any, config: Config) -> tuple[list[str], list[str]]:
    """The registered files of `record` that may be loaded -- its verified copy in the
    best folder first, then the trainer's original -- and a reason for each refused one."""
    if not getattr(record, "sha256", None):
        return [], [f"checkpoint {record.id}: the registry records no sha256 for it"]
    roots = checkpoint_roots(config)
    allowed, refused = [], []
    for path in dict.fromkeys(p for p in (getattr(record, "best_path", None), record.path) if p):
        resolved = confined(path, roots)
        if resolved is None:
            refused.append(f"{path}: outside the checkpoint folders {', '.join(map(str, roots))}")
        else:
            allowed.append(str(resolved))  # the resolved path: a symlink swapped later changes nothing
    return allowed, refused
