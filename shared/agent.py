"""The agent in your own process: load a checkpoint, ask it for decisions.

>>> from shared.agent import Agent
>>> agent = Agent.load("best")                       # or Agent.load("runs/x/checkpoints/ckpt-000001000.pt")
>>> decision = agent.act(bars_df, position=(1, 12))  # long for 12 bars
>>> decision.action, decision.policy_by_name, decision.value

It is the API's code path: observations come from :mod:`shared.serving.observation`,
the checkpoint is loaded by :func:`shared.serving.model.load_served_model` (sha256
verified, ``weights_only``) and decisions come from :func:`shared.serving.decide.decide`,
which the API's inference thread runs too -- so for the same bars, position and
checkpoint, ``agent.act`` and ``POST /v1/act`` give the same action, policy and value.

``"best"`` is the registry's best checkpoint (``pipeline.database_url``) loaded from its
registered files with the sha256 the registry recorded; without a registry, the
validator's copy ``pipeline.best_dir/best.pt`` verified against its sidecar.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from shared.checkpoint_store import best_path
from shared.config import Config, load_config
from shared.learning.checkpoint import CheckpointError
from shared.registry import Registry
from shared.serving.decide import Decision, decide
from shared.serving.frames import to_bars
from shared.serving.model import CheckpointInfo, ServedModel, load_served_model
from shared.serving.observation import Observation, bars_needed, observation_from_bars
from shared.serving.schemas import Position
from shared.serving.trust import trusted_files

log = logging.getLogger(__name__)

BEST = "best"
PositionLike = Position | tuple[int, int] | Mapping[str, int] | None


class Agent:
    """A loaded checkpoint that answers with greedy-search decisions."""

    def __init__(self, served: ServedModel, symbol: str | None = None) -> None:
        self.served = served
        self.symbol = (symbol or served.config.pipeline.symbol).upper()

    @classmethod
    def load(
        cls,
        checkpoint: str | Path = BEST,
        config: Config | None = None,
        *,
        device: str | torch.device | None = "cpu",
        symbol: str | None = None,
    ) -> Agent:
        """The agent of `checkpoint` (``"best"`` or a path). `config` (default: the usual
        file / ``MZ_*`` environment / defaults) supplies the window, market specs and
        search; `symbol` is the default of :meth:`act` (default ``pipeline.symbol``)."""
        config = config or load_config()
        if str(checkpoint) == BEST:
            served = _load_best(config, device)
        else:
            served = load_served_model(checkpoint, None, config, device)
        return cls(served, symbol)

    @property
    def checkpoint(self) -> CheckpointInfo:
        return self.served.info

    @property
    def config(self) -> Config:
        """The config observations are built with (the checkpoint's feature settings)."""
        return self.served.config

    @property
    def bars_needed(self) -> int:
        """The fewest bars :meth:`act` accepts: the features' warm-up plus one window."""
        return bars_needed(self.config)

    def observe(self, bars: Any, position: PositionLike = None, symbol: str | None = None) -> Observation:
        """The observation at the newest of `bars` (DataFrame, Bars or records) holding `position`."""
        held = _position(position)
        return observation_from_bars(
            to_bars(bars), held.side, held.bars_held, (symbol or self.symbol).upper(), self.config
        )

    def act(self, bars: Any, position: PositionLike = None, symbol: str | None = None) -> Decision:
        """The decision at the newest of `bars` while holding `position` (default flat).

        `position`: a :class:`Position`, ``(side, bars_held)`` or ``{"side", "bars_held"}``
        -- the trade was filled at the close of the bar `bars_held` bars before the newest.
        Raises :class:`shared.serving.observation.ObservationError` for unusable input.
        """
        return decide(self.served, [self.observe(bars, position, symbol)])[0]

    def act_many(self, states: Sequence[tuple[Any, PositionLike] | tuple[Any, PositionLike, str]]) -> list[Decision]:
        """One batched search over many states ``(bars, position[, symbol])``, e.g. one per symbol."""
        return decide(self.served, [self.observe(*state) for state in states])

    def __repr__(self) -> str:
        info = self.checkpoint
        return f"Agent(checkpoint={info.id}, step={info.step}, path={str(info.path)!r}, symbol={self.symbol!r})"


def _position(position: PositionLike) -> Position:
    if position is None:
        return Position()
    if isinstance(position, Position):
        return position
    if isinstance(position, Mapping):
        return Position.model_validate(dict(position))
    side, held = position
    return Position(side=side, bars_held=held)


def _load_best(config: Config, device: str | torch.device | None) -> ServedModel:
    """The registry's best from its registered files, else ``best_dir/best.pt``."""
    record = _registry_best(config)
    if record is None:
        path = best_path(config)
        if not path.is_file():
            raise CheckpointError(
                f"checkpoint {path}: no best checkpoint kept yet (the validator writes it to pipeline.best_dir); "
                "pass a checkpoint path instead"
            )
        return load_served_model(path, None, config, device)
    paths, errors = trusted_files(record, config)  # the API's rule: registered, inside the folders
    for trusted in paths:
        try:
            return load_served_model(trusted, record.id, config, device, expected_sha256=record.sha256)
        except (CheckpointError, OSError) as exc:
            errors.append(str(exc))
    raise CheckpointError(f"the registry's best checkpoint {record.id} cannot be loaded: {' | '.join(errors)}")


def _registry_best(config: Config) -> Any:
    """The registry's best record; None without a registry (a missing SQLite file is not
    created) or when it is unreachable (logged)."""
    url = config.pipeline.database_url
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
        return None
    try:
        registry = Registry(url)
        try:
            return registry.best_checkpoint()
        finally:
            registry.close()
    except SQLAlchemyError as exc:
        log.warning("the registry %s is unreachable (%s); using %s", url, type(exc).__name__, best_path(config))
        return None
