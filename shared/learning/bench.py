"""Benchmark of the learner: steps/s at the configured batch against a bare
forward+backward pass of the same batch, and the peak memory of each.

The learner step adds replay sampling, priority updates, gradient clipping and the
Adam update to the bare pass; the ratio says how much of its time is the network.
Fresh targets (the target network's value bootstraps and Reanalyse's searches,
``reanalyse.py``, and the hindsight targets where ``hindsight_steps`` > 0) get their
own line: the learner with them as configured, against the same learner with stored
targets.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from shared.config import Config
from shared.learning.learner import Learner
from shared.learning.losses import stochastic_muzero_loss
from shared.learning.replay import ReplayBuffer
from shared.market import MarketData
from shared.model.networks import StochasticMuZeroNet
from shared.selfplay import SelfPlay


@dataclass
class TrainBench:
    device: str
    batch_size: int
    learner_steps_per_s: float
    bare_steps_per_s: float  # forward + backward of one fixed batch, nothing else
    ratio: float  # plain learner / bare (1.0 = the learner adds nothing)
    learner_peak_mib: float
    bare_peak_mib: float
    fresh_targets_steps_per_s: float  # the configured learner: value bootstraps + Reanalyse (+ hindsight)
    fresh_targets_ratio: float  # configured / plain learner (1.0 = fresh targets cost nothing)
    searched_roots_per_step: float  # Reanalyse's roots + the search bootstraps' roots
    hindsight_steps: int  # learning.hindsight_steps of the configured learner (0 = no hindsight targets)

    def as_dict(self) -> dict:
        return asdict(self)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak RSS (VmHWM)


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _timed(fn, steps: int, device: torch.device) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps / (time.perf_counter() - started)


def bench_train(config: Config, market: MarketData, device_name: str = "cpu", steps: int = 30) -> TrainBench:
    device = torch.device(device_name)
    replay = ReplayBuffer(market, config.learning, config.env.window, config.env.drawdown_penalty, seed=0)
    selfplay = SelfPlay.from_config(config, market, num_envs=16)
    for episode in selfplay.play("random"):
        replay.insert(episode)
    model = StochasticMuZeroNet(config.model).to(device)
    plain = config.learning.model_copy(update={"value_bootstrap": "stored", "reanalyse_fraction": 0.0})
    learner = Learner(model, plain, device, search=config.search)
    fresh = Learner(StochasticMuZeroNet(config.model).to(device), config.learning, device, search=config.search)
    batch_size = config.learning.batch_size
    fixed = replay.sample(batch_size, hindsight=False).to(device)

    def bare() -> None:
        model.train()
        model.zero_grad(set_to_none=True)
        stochastic_muzero_loss(model, fixed, config.learning).loss.backward()

    _reset_peak(device)
    bare_rate = _timed(bare, steps, device)
    bare_peak = _peak_mib(device)
    _reset_peak(device)

    def stored_targets() -> None:
        learner.step(replay.sample(batch_size, bootstrap_obs=False, hindsight=False), replay)

    learner_rate = _timed(stored_targets, steps, device)
    learner_peak = _peak_mib(device)
    fresh_rate = _timed(lambda: fresh.step(replay.sample(batch_size), replay), steps, device)
    return TrainBench(
        str(device),
        batch_size,
        learner_rate,
        bare_rate,
        learner_rate / bare_rate,
        learner_peak,
        bare_peak,
        fresh_rate,
        fresh_rate / learner_rate,
        fresh.searched_roots / max(fresh.steps, 1),
        config.learning.hindsight_steps,
    )
