"""Every experiment of ``microzero experiment NAME`` at a glance.

An experiment is a list of variants; a variant is a set of config overrides (nested
dicts, applied on top of the user's config and the ``--small`` preset) and the agent
that is trained with them. Everything not overridden is shared by all variants of an
experiment, and every variant is trained on the same train split with the same seeds
and budget and evaluated greedily on the same validation split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from shared.config import Config


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    agent: Literal["muzero", "ppo"] = "muzero"


@dataclass(frozen=True)
class Experiment:
    name: str
    question: str
    variants: tuple[Variant, ...]


def _search(root: str, sims: int) -> Variant:
    return Variant(f"{root}-{sims}", {"search": {"root": root, "num_simulations": sims}})


def _window(bars: int) -> Variant:
    # The model's window and the environment's must move together (Config validates it).
    return Variant(f"window-{bars}", {"env": {"window": bars}, "model": {"window": bars}})


EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        Experiment(
            "stochastic",
            "does the chance model help? 16 chance codes vs 1 (one code = the dynamics never "
            "branch: a deterministic MuZero with the same networks)",
            (
                Variant("stochastic-16", {"model": {"chance_codes": 16}, "search": {"num_chance_codes": 16}}),
                Variant("deterministic-1", {"model": {"chance_codes": 1}, "search": {"num_chance_codes": 1}}),
            ),
        ),
        Experiment(
            "window",
            "how much history should one observation hold? 32 vs 64 vs 128 bars",
            (_window(32), _window(64), _window(128)),
        ),
        Experiment(
            "time-features",
            "do the FX-week and time-of-day cycles (columns 5-8) help? Off = those columns are 0",
            (
                Variant("with-time", {"features": {"time_features": True}}),
                Variant("without-time", {"features": {"time_features": False}}),
            ),
        ),
        Experiment(
            "search",
            "Gumbel root (sequential halving) vs pUCT (Dirichlet noise) at 4, 8 and 15 simulations",
            tuple(_search(root, sims) for root in ("gumbel", "puct") for sims in (4, 8, 15)),
        ),
        Experiment(
            "ppo",
            "MuZero vs a model-free PPO agent (stable-baselines3) on the same gymnasium environment",
            (Variant("muzero"), Variant("ppo", agent="ppo")),
        ),
    )
}

# ``--small``: a ~145 k-parameter model instead of 1.29 M, one chance code, 8 simulations, 16
# environments and a higher learning rate. 16 samples per inserted position: a replay
# ratio of the order of PPO's ~10 passes over its data (2 starved the learner: small
# MuZero stayed flat on sine where PPO earned 84 % of perfect foresight). Variant
# overrides are applied after it, so `search` still sets its own sims.
SMALL: dict[str, Any] = {
    "model": {
        "tcn_channels": 16,
        "hidden": 64,
        "head_hidden": 32,
        "encoder_hidden": 32,
        "residual_blocks": 1,
        # One chance code: a deterministic MuZero. With 16 the codebook collapsed to one
        # code anyway, and on sine (validation, 3 seeds) one code did better at 11.5 k and
        # 23 k env steps (3,883 / 4,817 pips against 3,328 / 4,026; docs/RESULTS.md §0).
        "chance_codes": 1,
    },
    # 8 simulations, not 4: on the validation split (Gumbel root) the mean was above 4's on
    # sine at 11.5 k env steps and 22 pips below at 23 k (seeds 0-3: 5,090 / 5,218 pips
    # against 4,872 / 5,241), and above on regime (3 seeds, 11.5 k: 3,716 against 3,019),
    # for 1.1-1.5x the training time (side by side on validation; the test runs).
    # docs/RESULTS.md round 3; the curves made before it used 4.
    "search": {"num_simulations": 8, "num_chance_codes": 1},
    "learning": {"lr": 1e-3, "samples_per_insert": 16, "samples_per_insert_tolerance": 1000},
    "train": {"num_envs": 16},
}


def get_experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def apply_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """`config` with nested `overrides` ({section: {field: value}}), validated.

    Each section is re-validated on its own and swapped in with ``model_copy``:
    re-validating the whole ``Config`` (a BaseSettings) would re-read ``MZ_*``
    variables, which take priority over init values and would undo the overrides.
    """
    updates = {}
    for section, values in overrides.items():
        current = getattr(config, section, None)
        if current is None or not isinstance(values, dict):
            raise ValueError(f"override section {section!r} is not a config section with fields")
        unknown = sorted(set(values) - set(type(current).model_fields))
        if unknown:
            raise ValueError(f"{section} has no setting {', '.join(unknown)}")
        updates[section] = type(current).model_validate(_merge(current.model_dump(), values))
    result = config.model_copy(update=updates)
    result._one_window()  # type: ignore[operator]  # the cross-section check Config runs at construction
    return result


def parse_settings(settings: list[str]) -> dict[str, Any]:
    """``["learning.lr=0.003", "search.root=puct"]`` -> ``{"learning": {"lr": 0.003}, "search":
    {"root": "puct"}}``: each value is read as JSON (numbers, true/false, null), else kept as text."""
    out: dict[str, dict[str, Any]] = {}
    for text in settings:
        key, sep, raw = text.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not section or not name or "." in name:
            raise ValueError(f"--set takes section.field=value, e.g. learning.lr=0.003; got {text!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(section, {})[name] = value
    return out


def variant_config(config: Config, variant: Variant, small: bool = False) -> Config:
    """The config a variant is trained and evaluated with."""
    return apply_overrides(apply_overrides(config, SMALL) if small else config, variant.overrides)
