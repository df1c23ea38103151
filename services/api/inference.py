"""What ``POST /v1/act`` runs: the served model, observations built from requests, and
a micro-batching inference thread.

* :class:`ModelHolder` keeps the served model; a swap replaces one immutable
  :class:`ServedModel` reference under a lock, so a batch in flight finishes on the
  model it started with and every answer names the checkpoint that produced it.
* :func:`observation_from_bars` turns raw OHLC bars and a position into the exact
  ``[W, 15]`` observation the agent saw in training: the market features come from
  :func:`shared.market.market_from_bars` and the 6 position columns from replaying
  :class:`shared.env.VecTradingEnv` (a Buy/Sell at the entry bar, then Holds), so no
  position math is re-derived here.
* :class:`InferenceEngine` owns the only thread that runs the model. Requests queue
  their observation; the thread takes everything waiting (up to ``max_batch``) and runs
  one batched greedy search over it (``run_search`` is batched over roots, and with no
  root noise each root's result depends only on its own inputs). This makes inference
  thread-safe without a lock around torch, and concurrent clients share the search's
  per-simulation overhead instead of queueing behind a lock one by one. Measured on
  2 shared CPU cores, default model, 15 simulations: one search of B=1 takes 17 ms,
  B=8 19 ms, B=32 27 ms. The thread uses one intra-op torch thread by default: with
  two, the same searches took 115 / 540 / 1760 ms on a busy machine (OpenMP threads
  spinning against other processes), and small batches gain nothing from more.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from shared.actions import NUM_ACTIONS, Action, legal_mask
from shared.config import Config, SearchConfig
from shared.data.bars import Bars
from shared.device import pick_device
from shared.env import NUM_POSITION_FEATURES, VecTradingEnv
from shared.features import NUM_MARKET_FEATURES, warmup_bars
from shared.learning.checkpoint import CheckpointError, load_checkpoint
from shared.market import market_from_bars
from shared.model.networks import StochasticMuZeroNet
from shared.search import run_search

log = logging.getLogger(__name__)

OBS_FEATURES = NUM_MARKET_FEATURES + NUM_POSITION_FEATURES  # 15
_SIDE_COLUMN = NUM_MARKET_FEATURES  # column 9: the position side


class ObservationError(ValueError):
    """A request that passed the schema but cannot become an observation (-> 422)."""

    def __init__(self, loc: tuple[str | int, ...], msg: str) -> None:
        super().__init__(msg)
        self.loc, self.msg = loc, msg


class NoModelError(RuntimeError):
    """No checkpoint is loaded yet (-> 503)."""


class OverloadedError(RuntimeError):
    """Too many requests already wait for the inference thread (-> 503)."""


# ----------------------------------------------------------------------------- the served model


@dataclass(frozen=True)
class ServedModel:
    model: StochasticMuZeroNet  # eval mode, on `device`
    checkpoint_id: int | None
    step: int
    path: Path
    sha256: str
    device: torch.device
    search: SearchConfig  # greedy: no root noise, argmax acting
    loaded_at: datetime


def greedy_search_config(config: Config, chance_codes: int) -> SearchConfig:
    """config.search without root noise, acting on the best action (as the validator does)."""
    return config.search.model_copy(
        update={"gumbel_scale": 0.0, "dirichlet_fraction": 0.0, "temperature": 0.0, "num_chance_codes": chance_codes}
    )


def load_served_model(
    path: str | Path,
    checkpoint_id: int | None,
    config: Config,
    device: torch.device | None = None,
    expected_sha256: str | None = None,
) -> ServedModel:
    """Verify and load a checkpoint into an eval-mode model; CheckpointError on any problem."""
    device = device or pick_device()
    ckpt = load_checkpoint(path, map_location="cpu")  # verifies the sha256 sidecar, weights_only
    if expected_sha256 and ckpt.sha256 != expected_sha256:
        raise CheckpointError(
            f"checkpoint {path}: sha256 {ckpt.sha256[:16]}... differs from the registry's {expected_sha256[:16]}..."
        )
    try:
        cfg = ckpt.model_config()
        if cfg.window != config.env.window or cfg.input_features != OBS_FEATURES:
            raise CheckpointError(
                f"checkpoint {path}: model expects [{cfg.window}, {cfg.input_features}] observations, "
                f"this API builds [{config.env.window}, {OBS_FEATURES}]"
            )
        model = StochasticMuZeroNet(cfg)
        model.load_state_dict(ckpt.state_dict, strict=True)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path}: does not fit the model ({type(exc).__name__}: {exc})") from exc
    model.to(device).eval()
    return ServedModel(
        model=model,
        checkpoint_id=checkpoint_id,
        step=ckpt.step,
        path=Path(path),
        sha256=ckpt.sha256,
        device=device,
        search=greedy_search_config(config, cfg.chance_codes),
        loaded_at=datetime.now(UTC),
    )


class ModelHolder:
    """The currently served model; swaps are atomic reference replacements."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: ServedModel | None = None

    @property
    def current(self) -> ServedModel | None:
        return self._current

    def swap(self, served: ServedModel) -> ServedModel | None:
        with self._lock:
            previous, self._current = self._current, served
        log.info(
            "serving checkpoint %s (step %d, %s) on %s",
            served.checkpoint_id,
            served.step,
            served.path,
            served.device,
        )
        return previous


# ----------------------------------------------------------------------------- observations


@dataclass(frozen=True)
class Observation:
    obs: np.ndarray  # [W, 15] float32, oldest bar first
    side: int  # -1, 0, 1
    legal: np.ndarray  # [4] bool


def bars_needed(config: Config) -> int:
    """Bars a request must send: the features' warm-up (2L-1) plus one window."""
    return warmup_bars(config.features.lookback) + config.env.window


def observation_from_bars(bars: Bars, side: int, bars_held: int, symbol: str, config: Config) -> Observation:
    """The observation at the newest bar of `bars` while holding `side` for `bars_held` bars.

    The trade (if any) was filled at the close of bar ``n - 1 - bars_held``. Bars
    before the entry (inside the window) show a flat position, as in training, where
    the position state before an episode is flat.
    """
    W = config.env.window
    n, need = len(bars), bars_needed(config)
    if n < need:
        raise ObservationError(
            ("body", "bars"),
            f"{n} bars sent; at least {need} are needed ({need - W} warm-up bars for the features + a {W}-bar window)",
        )
    if side not in (-1, 0, 1):
        raise ObservationError(("body", "position", "side"), f"side must be -1, 0 or 1, got {side}")
    if (side == 0) != (bars_held == 0) or bars_held < 0:
        raise ObservationError(("body", "position", "bars_held"), "bars_held must be >= 1 when side != 0, else 0")
    if bars_held > n - 1:
        raise ObservationError(
            ("body", "position", "bars_held"),
            f"bars_held {bars_held} puts the entry before the first of the {n} bars sent; send at least "
            f"{bars_held + 1} bars so the entry price and the trade's path are known",
        )
    spec = config.market.spec(symbol)
    # The newest W feature rows depend only on the last `need` bars.
    try:
        with np.errstate(all="ignore"):
            market = market_from_bars(symbol, bars.slice(n - need, n), config)
    except (ValueError, ArithmeticError, AssertionError) as exc:
        raise ObservationError(("body", "bars"), f"the features cannot be computed from these bars: {exc}") from exc
    features = market.features  # [W, 9], rows = bars n-W .. n-1

    # Row space of the replay: W-1 flat padding rows (so an episode may start at the
    # entry bar whatever its index), bars first..n-1, and one copy of the newest bar
    # (the environment ends an episode one row before its data ends; the replay stops
    # before it is ever reached).
    entry = n - 1 - bars_held  # bar index of the entry fill (the newest bar when flat)
    first = min(entry, n - W)
    pad = W - 1
    span = n - first
    rows = pad + span + 1
    feat = np.zeros((rows, NUM_MARKET_FEATURES), dtype=np.float32)
    feat[pad + span - W : pad + span] = features
    close = np.empty(rows)
    close[:pad] = bars.close[first]
    close[pad : pad + span] = bars.close[first:]
    close[pad + span] = bars.close[-1]
    env = VecTradingEnv(
        feat,
        close,
        num_envs=1,
        pip=spec.pip,
        spread_pips=spec.spread_pips,
        window=W,
        episode_length=bars_held + 1,
        drawdown_penalty=config.env.drawdown_penalty,
        strict=True,
    )
    with np.errstate(all="ignore"):
        env.reset(starts=np.array([pad + entry - first]), lengths=np.array([bars_held + 1]))
        if side != 0:
            env.step(np.array([Action.BUY if side == 1 else Action.SELL]))
            hold = np.array([Action.HOLD])
            for _ in range(bars_held - 1):
                env.step(hold)
        obs = env.observe()[0].copy()
    if int(env.side[0]) != side or int(env.row[0]) != pad + span - 1:
        raise AssertionError(f"replay ended holding {int(env.side[0])} at row {int(env.row[0])}")  # a bug, not input
    if not np.isfinite(obs).all():
        raise ObservationError(
            ("body", "bars"), "the observation built from these bars is not finite (extreme prices?)"
        )
    return Observation(obs=obs, side=side, legal=env.legal_mask()[0].copy())


def observation_from_window(window: list[list[float]], config: Config, side: int | None = None) -> Observation:
    """A ready [W, 15] observation; every value in [-1, 1], the newest row's side in {-1, 0, 1}."""
    W = config.env.window
    if len(window) != W:
        raise ObservationError(("body", "window"), f"window has {len(window)} rows; expected {W} (oldest bar first)")
    for i, row in enumerate(window):
        if len(row) != OBS_FEATURES:
            hint = (
                " (the 9 market features alone are not enough: send the 6 position columns too, or send bars)"
                if len(row) == NUM_MARKET_FEATURES
                else ""
            )
            raise ObservationError(
                ("body", "window", i), f"window[{i}] has {len(row)} values; expected {OBS_FEATURES}{hint}"
            )
    obs = np.asarray(window, dtype=np.float64)
    bad = np.argwhere(~(np.abs(obs) <= 1.0 + 1e-6))
    if len(bad):
        i, j = (int(x) for x in bad[0])
        raise ObservationError(
            ("body", "window", i, j), f"window[{i}][{j}] = {obs[i, j]!r} is outside [-1, 1], the range of every column"
        )
    newest_side = obs[-1, _SIDE_COLUMN]
    if newest_side not in (-1.0, 0.0, 1.0):
        raise ObservationError(
            ("body", "window", W - 1, _SIDE_COLUMN),
            f"window[{W - 1}][{_SIDE_COLUMN}] (the position side) must be -1, 0 or 1, got {newest_side!r}",
        )
    if side is not None and side != int(newest_side):
        raise ObservationError(
            ("body", "position", "side"),
            f"position.side {side} disagrees with the window's newest side column ({int(newest_side)})",
        )
    side = int(newest_side)
    return Observation(obs=obs.astype(np.float32), side=side, legal=_legal(side))


def _legal(side: int) -> np.ndarray:
    return legal_mask(np.array(side)).copy()


# ----------------------------------------------------------------------------- batched inference


@dataclass(frozen=True)
class ActResult:
    action: int
    policy: np.ndarray  # [4] float, 0 on illegal actions
    value: float  # root value, pips
    legal: np.ndarray  # [4] bool
    checkpoint_id: int | None
    step: int


class InferenceEngine:
    """A single inference thread running batched greedy searches for queued observations."""

    def __init__(
        self, holder: ModelHolder, max_batch: int = 32, torch_threads: int | None = 1, max_pending: int = 1024
    ) -> None:
        self.holder, self.max_batch, self.torch_threads = holder, max_batch, torch_threads
        self.max_pending = max_pending
        self._queue: queue.Queue[tuple[Observation, Future] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.batches = 0
        self.requests = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="api-inference", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None
        # Fail anything still waiting.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[1].set_exception(RuntimeError("the API is shutting down"))

    def submit(self, observation: Observation) -> Future:
        if self._thread is None:
            raise RuntimeError("the inference engine is not running")
        if self._queue.qsize() >= self.max_pending:
            raise OverloadedError(f"{self.max_pending} requests are already waiting for inference; retry shortly")
        future: Future = Future()
        self._queue.put((observation, future))
        return future

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        if self.torch_threads:
            # Per thread under OpenMP: the rest of the process keeps its setting.
            torch.set_num_threads(self.torch_threads)
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:  # stop after this batch
                    self._queue.put(None)
                    break
                batch.append(more)
            batch = [(o, f) for o, f in batch if f.set_running_or_notify_cancel()]
            if batch:
                self._answer(batch)

    def _answer(self, batch: list[tuple[Observation, Future]]) -> None:
        served = self.holder.current  # one model for the whole batch, even if a swap lands now
        if served is None:
            for _, future in batch:
                future.set_exception(NoModelError("no checkpoint is loaded yet"))
            return
        try:
            device = served.device
            obs = torch.from_numpy(np.stack([o.obs for o, _ in batch])).to(device)
            legal = torch.from_numpy(np.stack([o.legal for o, _ in batch])).to(device)
            side = torch.tensor([o.side for o, _ in batch], dtype=torch.long, device=device)
            out = run_search(served.model, obs, legal, side, served.search)
            actions = out.action.cpu().numpy()
            policy = out.policy_target.double().cpu().numpy()
            values = out.root_value.double().cpu().numpy()
        except Exception as exc:
            log.exception("inference failed for a batch of %d", len(batch))
            for _, future in batch:
                future.set_exception(exc)
            return
        self.batches += 1
        self.requests += len(batch)
        for i, (o, future) in enumerate(batch):
            p = np.where(o.legal, policy[i], 0.0)
            total = p.sum()
            future.set_result(
                ActResult(
                    action=int(actions[i]),
                    policy=p / total if total > 0 else p,
                    value=float(values[i]),
                    legal=o.legal,
                    checkpoint_id=served.checkpoint_id,
                    step=served.step,
                )
            )


def act_names(mask: np.ndarray) -> list[str]:
    return [Action(i).name for i in range(NUM_ACTIONS) if mask[i]]
