"""Benchmark of the batched search: throughput, cost beside the network, speedup over the reference.

``bench_search`` measures, per batch size B:

* ``env_steps_per_s``: searches per second x B (one search = one decision for B envs);
* ``overhead_ratio``: search wall time / wall time of the very same network calls
  (same kinds, same batch sizes, recorded from the search and replayed without any
  tree op) — 1.0 would mean the tree costs nothing;
* ``speedup``: run_search_single's time per env x B / run_search's time (the reference
  runs on ``single_envs`` envs and is scaled per env).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shared.actions import LEGAL_BY_SIDE
from shared.search.reference import run_search_single
from shared.search.search import SearchConfig, SearchModel, run_search


@dataclass
class BenchRow:
    batch_size: int
    search_s: float  # wall time of one run_search call
    env_steps_per_s: float  # batch_size / search_s
    network_s: float  # wall time of the same network calls replayed alone
    overhead_ratio: float  # search_s / network_s
    network_calls: int  # inference calls per search
    single_s_per_env: float  # run_search_single time per environment
    speedup: float  # single_s_per_env * batch_size / search_s

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


class MLPStandIn(nn.Module):
    """A SearchModel with the real model's hidden size and a similar cost, for when no real one is at hand."""

    def __init__(self, window: int = 64, features: int = 15, hidden: int = 256, actions: int = 4, codes: int = 16):
        super().__init__()
        self.actions, self.codes = actions, codes

        def trunk(n_in: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Linear(n_in, hidden),
                nn.ReLU(),
                nn.Linear(hidden, hidden),
                nn.ReLU(),
                nn.Linear(hidden, hidden),
                nn.LayerNorm(hidden),
            )

        self.represent = trunk(window * features)
        self.after = trunk(hidden + actions)
        self.dynamics = trunk(hidden + codes)
        self.policy_value = nn.Linear(hidden, actions + 1)
        self.sigma_q = nn.Linear(hidden, codes + 1)
        self.reward = nn.Linear(hidden, 1)

    def initial_inference(self, obs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        state = self.represent(obs.flatten(1))
        out = self.policy_value(state)
        return state, out[:, : self.actions], out[:, -1]

    def afterstate_inference(self, state: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        after = self.after(torch.cat([state, F.one_hot(action, self.actions).to(state.dtype)], -1))
        out = self.sigma_q(after)
        return after, out[:, : self.codes], out[:, -1]

    def recurrent_inference(self, afterstate: Tensor, code: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        state = self.dynamics(torch.cat([afterstate, F.one_hot(code, self.codes).to(afterstate.dtype)], -1))
        out = self.policy_value(state)
        return state, self.reward(state)[:, 0], out[:, : self.actions], out[:, -1]


class _Recorder:
    """Wraps a model and records (kind, batch size) of every inference call."""

    def __init__(self, model: SearchModel):
        self.model = model
        self.calls: list[tuple[str, int]] = []

    def initial_inference(self, obs: Tensor):
        self.calls.append(("initial", obs.shape[0]))
        return self.model.initial_inference(obs)

    def afterstate_inference(self, state: Tensor, action: Tensor):
        self.calls.append(("afterstate", state.shape[0]))
        return self.model.afterstate_inference(state, action)

    def recurrent_inference(self, afterstate: Tensor, code: Tensor):
        self.calls.append(("recurrent", afterstate.shape[0]))
        return self.model.recurrent_inference(afterstate, code)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fns: list[Callable[[], object]], device: torch.device, repeats: int) -> list[float]:
    """Best wall time of each fn over `repeats` interleaved rounds, after one warm-up round.

    Interleaving puts the compared functions under the same machine load; the minimum is
    the least disturbed run.
    """
    best = [math.inf] * len(fns)
    for round_ in range(repeats + 1):
        for i, fn in enumerate(fns):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            if round_ > 0:
                best[i] = min(best[i], time.perf_counter() - start)
    return best


def _window(model: SearchModel) -> int:
    cfg = getattr(model, "cfg", None)
    return int(getattr(cfg, "window", 64))


def bench_search(
    model: SearchModel,
    batch_sizes: tuple[int, ...] = (1, 64, 256),
    num_simulations: int = 15,
    device: str | torch.device = "cpu",
    config: SearchConfig | None = None,
    single_envs: int = 8,
    repeats: int = 3,
    seed: int = 0,
) -> list[BenchRow]:
    """Time run_search against the bare network calls and against run_search_single; one row per B.

    ``model`` must already be on ``device`` (and in eval mode).
    """
    device = torch.device(device)
    config = (config or SearchConfig()).model_copy(update={"num_simulations": num_simulations})
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for B in batch_sizes:
        obs = torch.rand((B, _window(model), 15), generator=gen).to(device)
        side = torch.randint(-1, 2, (B,), generator=gen)
        legal = torch.as_tensor(LEGAL_BY_SIDE)[side + 1].to(device)
        side = side.to(device)

        inputs = (obs, legal, side)  # bound as defaults below: each closure is timed inside this iteration

        def search(m: SearchModel = model, n: int = B, x: tuple = inputs) -> object:
            return run_search(m, x[0][:n], x[1][:n], x[2][:n], config, torch.Generator().manual_seed(seed))

        recorder = _Recorder(model)
        search(recorder)
        replay = _replay_inputs(model, recorder.calls, obs)

        def network_only(r: list[tuple[str, tuple]] = replay) -> object:
            return _replay(model, r)

        search_s, network_s = _timed([search, network_only], device, repeats)

        n_single = min(single_envs, B)

        def single(n: int = n_single, x: tuple = inputs) -> object:
            return run_search_single(model, x[0][:n], x[1][:n], x[2][:n], config, torch.Generator().manual_seed(seed))

        (single_s,) = _timed([single], device, max(1, repeats // 2))
        single_s /= n_single

        rows.append(
            BenchRow(
                batch_size=B,
                search_s=search_s,
                env_steps_per_s=B / search_s,
                network_s=network_s,
                overhead_ratio=search_s / network_s,
                network_calls=len(recorder.calls),
                single_s_per_env=single_s,
                speedup=single_s * B / search_s,
            )
        )
    return rows


def _replay_inputs(model: SearchModel, calls: list[tuple[str, int]], obs: Tensor) -> list[tuple[str, tuple]]:
    """Inputs for each recorded call, built ahead so the replay times the network alone."""
    with torch.no_grad():
        state, _, _ = model.initial_inference(obs)
    codes = int(getattr(getattr(model, "cfg", None), "chance_codes", 16))
    inputs: list[tuple[str, tuple]] = []
    for kind, n in calls:
        index = torch.arange(n, device=obs.device) % obs.shape[0]
        if kind == "initial":
            inputs.append((kind, (obs[index],)))
        elif kind == "afterstate":
            inputs.append((kind, (state[index], index % 4)))
        else:
            inputs.append((kind, (state[index], index % codes)))
    return inputs


@torch.no_grad()
def _replay(model: SearchModel, inputs: list[tuple[str, tuple]]) -> None:
    for kind, args in inputs:
        getattr(model, f"{kind}_inference")(*args)


def format_rows(rows: list[BenchRow], model_name: str = "") -> str:
    """A small text table of bench rows."""
    head = f"search bench{' (' + model_name + ')' if model_name else ''}: {torch.get_num_threads()} threads\n"
    lines = [
        f"{'B':>5} {'search ms':>10} {'env-steps/s':>12} {'net ms':>8} {'search/net':>10} "
        f"{'calls':>6} {'single ms/env':>14} {'speedup':>8}"
    ]
    for r in rows:
        lines.append(
            f"{r.batch_size:>5} {r.search_s * 1e3:>10.2f} {r.env_steps_per_s:>12.0f} {r.network_s * 1e3:>8.2f} "
            f"{r.overhead_ratio:>10.2f} {r.network_calls:>6} {r.single_s_per_env * 1e3:>14.2f} {r.speedup:>8.1f}"
        )
    return head + "\n".join(lines)
