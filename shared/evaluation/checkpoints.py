"""Which checkpoint, its network, and how many checkpoints were tried to find it."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from shared.checkpoint_store import BEST_FILE
from shared.config import Config
from shared.learning.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from shared.model.networks import StochasticMuZeroNet
from shared.registry import CheckpointRecord, Registry

BEST = "best"
_PAGE = 500


@dataclass(frozen=True)
class Trials:
    """n_trials for the deflated Sharpe, and where the number came from."""

    n: int
    source: str  # "registry" | "checkpoint folder"
    detail: str  # one sentence for the report
    run_id: str | None = None
    symbol: str | None = None  # the run's symbol, when the registry knows it


def resolve_checkpoint(spec: str, config: Config) -> Path:
    """`spec` as a path; ``best`` is the best checkpoint kept by the validator."""
    if spec != BEST:
        return Path(spec)
    path = Path(config.pipeline.best_dir) / BEST_FILE
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path}: no best checkpoint kept yet (the validator writes it to pipeline.best_dir); "
            "pass --checkpoint PATH instead"
        )
    return path


def load_model(path: Path) -> tuple[StochasticMuZeroNet, Checkpoint]:
    """The network described by the checkpoint's own model config, with its weights."""
    ckpt = load_checkpoint(path, map_location="cpu")  # CheckpointError names the file
    try:
        model = StochasticMuZeroNet(ckpt.model_config())
        model.load_state_dict(ckpt.state_dict)
    except (ValueError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {path}: its weights do not fit its model config ({exc})") from exc
    return model.eval(), ckpt


def count_trials(config: Config, ckpt: Checkpoint) -> Trials:
    """The number of checkpoints of the checkpoint's run in the SQL registry (matched by
    sha256, so the validator's best.pt copy finds its run); else the checkpoint files in
    its folder."""
    url = config.pipeline.database_url
    reason = "the checkpoint is not recorded there"
    try:
        record, registry = _find_record(url, ckpt.sha256)
        if record is not None and registry is not None:
            n = registry.count_checkpoints(record.run_id)
            run = registry.get_run(record.run_id)
            registry.close()
            return Trials(
                max(1, n),
                "registry",
                f"{n} checkpoint(s) of run {record.run_id!r} in the registry {registry!r}",
                record.run_id,
                None if run is None else run.symbol,
            )
        if registry is None:
            reason = "there is no registry database"
        else:
            registry.close()
    except SQLAlchemyError as exc:
        reason = f"the registry is unreachable ({type(exc).__name__})"
    folder = ckpt.path.resolve().parent
    files = sorted(folder.glob("ckpt-*.pt")) or sorted(folder.glob("*.pt"))
    return Trials(max(1, len(files)), "checkpoint folder", f"{len(files)} checkpoint file(s) in {folder} ({reason})")


def _find_record(url: str, sha256: str) -> tuple[CheckpointRecord | None, Registry | None]:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
        return None, None  # do not create an empty registry file as a side effect
    registry = Registry(url)
    offset = 0
    while page := registry.list_checkpoints(limit=_PAGE, offset=offset):
        for record in page:
            if record.sha256 == sha256:
                return record, registry
        offset += _PAGE
    return None, registry


def with_checkpoint_features(config: Config, ckpt: Checkpoint) -> Config:
    """`config` with the feature settings `ckpt` was trained on, when it records them:
    a model fed other inputs (another lookback, the time features switched back on)
    would be judged on data it never saw. Prints a note when they differ."""
    features = ckpt.features_config()
    if features is None or features == config.features:
        return config
    print(
        f"note: using the checkpoint's feature settings {features.model_dump()} "
        f"(config has {config.features.model_dump()})",
        file=sys.stderr,
    )
    return config.model_copy(update={"features": features})
