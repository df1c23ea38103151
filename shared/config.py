"""One typed configuration object for every part of microzero.

Values come, highest priority first, from ``MZ_*`` environment variables (nested
fields with ``__``, e.g. ``MZ_ENV__EPISODE_LENGTH=240``), then from a JSON or YAML
file named by ``MZ_CONFIG`` (or passed to :func:`load_config`), then the defaults
below, which are the ones fixed by ARCHITECTURE.md.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from shared.model.config import ModelConfig


class SymbolSpec(BaseModel):
    """Costs and price granularity of one instrument."""

    pip: float = Field(gt=0, description="price of one pip")
    spread_pips: float = Field(ge=0, description="cost of one round trip, in pips")


# Defaults for symbols not listed in ``MarketConfig.symbols``: JPY crosses quote to 2
# decimals, everything else to 4.
_DEFAULT_SYMBOLS = {
    "EURUSD": SymbolSpec(pip=0.0001, spread_pips=1.0),
    "GBPJPY": SymbolSpec(pip=0.01, spread_pips=4.0),
}


class MarketConfig(BaseModel):
    symbols: dict[str, SymbolSpec] = Field(default_factory=lambda: dict(_DEFAULT_SYMBOLS))
    default_spread_pips: float = Field(1.0, ge=0)

    def spec(self, symbol: str) -> SymbolSpec:
        symbol = symbol.upper()
        if symbol in self.symbols:
            return self.symbols[symbol]
        pip = 0.01 if "JPY" in symbol else 0.0001
        return SymbolSpec(pip=pip, spread_pips=self.default_spread_pips)


class DataConfig(BaseModel):
    db_path: Path = Path("var/microzero.duckdb")
    cache_dir: Path = Path("var/cache")
    default_symbol: str = "EURUSD"


class FeatureConfig(BaseModel):
    lookback: int = Field(60, ge=2, description="L of the rolling features")


class SplitConfig(BaseModel):
    train: float = Field(0.70, gt=0)
    validation: float = Field(0.15, gt=0)
    test: float = Field(0.15, gt=0)

    @model_validator(mode="after")
    def _sum_to_one(self) -> "SplitConfig":
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"split fractions must sum to 1, got {total}")
        return self


class EnvConfig(BaseModel):
    window: int = Field(64, ge=1, description="bars per observation")
    episode_length: int = Field(360, ge=1, description="decisions per episode")
    drawdown_penalty: float = Field(0.01, ge=0, description="pips of reward per pip of drawdown increase")


class Config(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MZ_", env_nested_delimiter="__", extra="forbid")

    data: DataConfig = Field(default_factory=DataConfig)
    market: MarketConfig = Field(default_factory=MarketConfig)
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    splits: SplitConfig = Field(default_factory=SplitConfig)
    env: EnvConfig = Field(default_factory=EnvConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)

    @model_validator(mode="after")
    def _one_window(self) -> "Config":
        if self.model.window != self.env.window:
            raise ValueError(f"model.window ({self.model.window}) must equal env.window ({self.env.window})")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment variables override the file, which arrives as init kwargs.
        return env_settings, init_settings


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a JSON or YAML config file into a dict, with a clear error on failure."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"config file {path} is not valid {path.suffix[1:] or 'YAML'}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping at the top level")
    return data


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Build the config from ``path`` (or ``$MZ_CONFIG``), the environment and defaults."""
    path = path or os.environ.get("MZ_CONFIG")
    return Config(**(read_config_file(path) if path else {}))


@lru_cache(maxsize=1)
def default_config() -> Config:
    return load_config()
