"""Atomic, verifiable checkpoints (ARCHITECTURE §6).

A checkpoint ``ckpt-<step>[-<lineage>].pt`` is ``torch.save`` of a plain dict::

    {"format_version": 1, "step": int, "state_dict": {name: Tensor (cpu)},
     "optimizer": Adam state_dict or None, "config": {"model": {...}, "learning": {...} | None}}

so it loads with ``torch.load(weights_only=True)`` (no pickled classes). Next to it a
sidecar ``ckpt-<step>.pt.sha256`` holds the sha256 of the whole file in ``sha256sum``
format (so ``sha256sum -c`` works and the registry can record the digest). A sidecar,
rather than a digest embedded in the dict, covers every byte of the file: any
truncation or flipped byte is refused before unpickling starts.

Writing is atomic: both files are written to temp files in the target directory and
fsynced; the sidecar is renamed into place first, then the checkpoint, then the
directory is fsynced. A reader therefore never sees a checkpoint without its digest;
a crash between the two renames leaves a sidecar without a checkpoint, which
``latest_checkpoint`` ignores.

Names never collide across resumes: the trainer adds a ``<lineage>`` token of its own
to every name, and saves with ``exclusive=True`` (an existing file is never replaced),
so a trainer that resumed from an older checkpoint and re-reaches a step cannot
overwrite the registered file of that step.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shared.config import FeatureConfig, LearningConfig
from shared.model import ModelConfig

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt-(\d+)(?:-([0-9a-z]{1,32}))?\.pt$")


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, tampered with or not a checkpoint."""


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    state_dict: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    config: dict[
        str, Any
    ]  # {"model": ModelConfig dict, "learning": ..., "features": FeatureConfig dict} (dicts or None)
    format_version: int
    sha256: str

    def model_config(self) -> ModelConfig:
        # Checkpoints saved before `support_space` existed were trained in h-space.
        return ModelConfig.model_validate({"support_space": "h", **self.config["model"]})

    def learning_config(self) -> LearningConfig | None:
        learning = self.config.get("learning")
        return None if learning is None else LearningConfig.model_validate(learning)

    def features_config(self) -> FeatureConfig | None:
        """The feature settings the network was trained on (None in older checkpoints)."""
        features = self.config.get("features")
        return None if features is None else FeatureConfig.model_validate(features)


def checkpoint_path(directory: str | Path, step: int, lineage: str | None = None) -> Path:
    """``ckpt-<step>.pt``, or ``ckpt-<step>-<lineage>.pt`` (`lineage`: lowercase letters and digits)."""
    if lineage is not None and not re.fullmatch(r"[0-9a-z]{1,32}", lineage):
        raise ValueError(f"lineage {lineage!r} must be 1-32 lowercase letters or digits")
    return Path(directory) / (f"ckpt-{step:09d}.pt" if lineage is None else f"ckpt-{step:09d}-{lineage}.pt")


def checkpoint_files(directory: str | Path) -> list[Path]:
    """The ``ckpt-*.pt`` files in `directory`, newest first (by step, then modification time)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        if (m := _NAME.match(path.name)) is not None:
            try:
                found.append((int(m.group(1)), path.stat().st_mtime_ns, path.name, path))
            except FileNotFoundError:  # deleted meanwhile (retention)
                continue
    return [path for *_, path in sorted(found, reverse=True)]


def sidecar_path(path: str | Path) -> Path:
    return Path(f"{path}.sha256")


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    step: int,
    *,
    model_config: ModelConfig | None = None,
    learning_config: LearningConfig | None = None,
    features_config: FeatureConfig | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    exclusive: bool = False,
) -> str:
    """Write `model` (and optionally the optimizer) atomically; returns the file's sha256.
    `exclusive`: FileExistsError rather than replace an existing file."""
    path = Path(path)
    model_config = model_config or getattr(model, "cfg", None)
    if model_config is None:
        raise ValueError("save_checkpoint needs a model_config (the model has no .cfg)")
    payload = {
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "state_dict": {name: t.detach().cpu() for name, t in model.state_dict().items()},
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "config": {
            "model": model_config.model_dump(mode="json"),
            "learning": None if learning_config is None else learning_config.model_dump(mode="json"),
            # Evaluation must rebuild the same inputs (lookback, the time-feature switch).
            "features": None if features_config is None else features_config.model_dump(mode="json"),
        },
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    write_checkpoint_bytes(path, data, digest, exclusive=exclusive)
    return digest


def write_checkpoint_bytes(path: str | Path, data: bytes, digest: str, *, exclusive: bool = False) -> None:
    """Write checkpoint bytes and their ``sha256sum`` sidecar, each atomically, sidecar
    first: a reader never sees a checkpoint without its digest. Also used to copy a
    verified checkpoint (best.pt, history). `exclusive`: FileExistsError if `path`
    exists (checked first, and again atomically when the file is linked into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if exclusive and path.exists():
        raise FileExistsError(f"checkpoint {path} exists: not overwriting it")
    _atomic_write(sidecar_path(path), f"{digest}  {path.name}\n".encode())
    _atomic_write(path, data, exclusive=exclusive)


def _atomic_write(path: Path, data: bytes, *, exclusive: bool = False) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            os.link(tmp, path)  # atomic, and fails if `path` exists (os.replace would clobber it)
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _verified_bytes(path: Path) -> tuple[bytes, str]:
    """The file's bytes and sha256, checked against its sidecar."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: file does not exist")
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        raise CheckpointError(f"checkpoint {path}: its sha256 sidecar {sidecar.name} is missing")
    fields = sidecar.read_text(errors="replace").split()
    if not fields or not re.fullmatch(r"[0-9a-f]{64}", fields[0]):
        raise CheckpointError(f"checkpoint {path}: sidecar {sidecar.name} holds no sha256 digest")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != fields[0]:
        raise CheckpointError(
            f"checkpoint {path}: sha256 {digest[:16]}... does not match {fields[0][:16]}... recorded in "
            f"{sidecar.name} ({len(data)} bytes): the file is truncated or was modified"
        )
    return data, digest


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Verify and load a checkpoint; raises CheckpointError saying which file and what is wrong."""
    path = Path(path)
    data, digest = _verified_bytes(path)
    try:
        # weights_only=True: tensors and plain containers only, never arbitrary objects.
        payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- any unpickling failure means "not a checkpoint"
        raise CheckpointError(
            f"checkpoint {path}: not a loadable torch checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(payload, dict) or not {"format_version", "step", "state_dict", "config"} <= payload.keys():
        raise CheckpointError(
            f"checkpoint {path}: not a microzero checkpoint (missing format_version/step/state_dict/config)"
        )
    version = payload["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path}: format_version {version!r} is not supported (<= {FORMAT_VERSION})")
    state = payload["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise CheckpointError(f"checkpoint {path}: state_dict is not a mapping of tensors")
    config = payload["config"]
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise CheckpointError(f"checkpoint {path}: config lacks the model configuration")
    return Checkpoint(
        path=path,
        step=int(payload["step"]),
        state_dict=state,
        optimizer=payload.get("optimizer"),
        config=config,
        format_version=version,
        sha256=digest,
    )


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest ``ckpt-*.pt`` in `directory` (highest step, then latest written) whose
    sha256 verifies, or None."""
    for path in checkpoint_files(directory):
        try:
            _verified_bytes(path)
        except CheckpointError as exc:
            log.warning("skipping %s", exc)
            continue
        return path
    return None
