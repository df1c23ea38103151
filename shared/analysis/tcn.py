"""What the representation's TCN learned: its kernels per dilation, and where the
attention pooling looks inside the observation window.

The representation (``shared.model.networks.Representation``) pools the TCN outputs
z [B, W, C] with ``softmax(score(z), dim=1)``. :func:`attention_weights` reads those
weights from the model's own forward pass through forward hooks, so the model's code
and results stay untouched; ``tests/test_analyze.py`` checks the weights reproduce
the pooled vector the trunk receives.

Kernels: ``CausalConvBlock.conv.weight`` [C_out, C_in, k]; with left padding only,
tap j of a dilation-d block reads the bar ``(k - 1 - j) * d`` bars before the output
bar (tap k-1 = the bar itself). BatchNorm follows each conv and rescales every output
channel, so raw weight sizes are compared within a block; ``bn_scale`` =
gamma / sqrt(running_var + eps) gives the BatchNorm-folded (effective) kernels.

Observations are the split's windows with a *flat* position state (the 6 position
columns 0), as at the first decision of an episode: this looks at the market reading
alone, not at how the agent reacts to its own open trade.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from shared.env import VecTradingEnv
from shared.features import FEATURE_NAMES
from shared.market import MarketData
from shared.model.networks import StochasticMuZeroNet
from shared.model.tcn import CausalConvBlock
from shared.splits import Split

POSITION_NAMES = ("side", "pnl", "bars_held", "drawdown", "max_drawdown", "accumulated_drawdown")
NEWEST = 8  # "recent" bars for the attention share


@dataclass(frozen=True)
class Kernel:
    """One TCN block's convolution."""

    dilation: int
    weight: np.ndarray  # [C_out, C_in, k]
    bn_scale: np.ndarray  # [C_out]: the BatchNorm multiplier of each output channel (eval mode)

    @property
    def lags(self) -> list[int]:
        """Bars back from the output bar that each tap reads, tap 0 first."""
        k = self.weight.shape[-1]
        return [(k - 1 - j) * self.dilation for j in range(k)]

    def mean_abs_per_tap(self, folded: bool = False) -> np.ndarray:
        w = self.weight * self.bn_scale[:, None, None] if folded else self.weight
        return np.abs(w).mean(axis=(0, 1))  # [k]


def tcn_kernels(model: StochasticMuZeroNet) -> list[Kernel]:
    """The convolution of every TCN block, first (reads the observation) to last."""
    kernels = []
    for block in model.representation_net.tcn.blocks:
        assert isinstance(block, CausalConvBlock)
        norm = block.norm
        assert norm.running_var is not None  # BatchNorm tracks running statistics here
        scale = norm.weight.detach() / torch.sqrt(norm.running_var + norm.eps)
        kernels.append(
            Kernel(int(block.conv.dilation[0]), block.conv.weight.detach().cpu().numpy().copy(), scale.cpu().numpy())
        )
    return kernels


@torch.no_grad()
def attention_weights(model: StochasticMuZeroNet, obs: Tensor) -> tuple[Tensor, Tensor]:
    """obs [B, W, F] -> (attention weights [B, W] over the window's bars, oldest first;
    TCN outputs z [B, W, C]), as used in the model's representation forward pass."""
    rep = model.representation_net
    seen: dict[str, Tensor] = {}
    hooks = [
        rep.tcn.register_forward_hook(lambda _m, _i, out: seen.__setitem__("z", out)),
        rep.score.register_forward_hook(lambda _m, _i, out: seen.__setitem__("score", out)),
    ]
    try:
        rep(obs)
    finally:
        for hook in hooks:
            hook.remove()
    # The same normalisation as Representation.forward: softmax over the time axis.
    return torch.softmax(seen["score"], dim=1).squeeze(-1), seen["z"]


def observations_at(market: MarketData, rows: np.ndarray, window: int, played: Sequence[int] = ()) -> np.ndarray:
    """[N, W, 15] observations at decision rows `rows`, after the environment played the
    actions `played` on the bars just before (none: the position state is flat, the
    first observation of an episode starting at each row)."""
    starts = np.asarray(rows, dtype=np.int64) - len(played)
    env = VecTradingEnv.for_market(
        market,
        num_envs=len(starts),
        window=window,
        episode_length=len(played) + 1,
    )
    obs = env.reset(starts=starts, lengths=np.full(len(starts), len(played) + 1, np.int64))
    for action in played:
        env.step(np.full(len(starts), action, dtype=np.int64))
        obs = env.observe()
    return obs


def flat_observations(market: MarketData, rows: np.ndarray, window: int) -> np.ndarray:
    """[N, W, 15] observations at decision rows `rows`, position state flat."""
    return observations_at(market, rows, window)


@dataclass(frozen=True)
class AttentionStats:
    rows: np.ndarray  # [N] decision rows averaged over
    mean: np.ndarray  # [W] mean weight per bar, oldest first
    std: np.ndarray  # [W]
    entropy: np.ndarray  # [N] nats, per window
    newest_share: np.ndarray  # [N] weight on the newest NEWEST bars
    argmax_lag: np.ndarray  # [N] bars back of each window's most attended bar


def split_attention(
    model: StochasticMuZeroNet,
    market: MarketData,
    split: Split,
    window: int,
    max_windows: int = 4096,
    batch: int = 256,
    progress: bool = False,
) -> AttentionStats:
    """Attention over up to `max_windows` decision rows evenly spread over `split`."""
    first, n = split.first_decision(window), split.decisions(window)
    if n < 1:
        raise ValueError(f"the {split.name} split has no decision bar for a {window}-bar window")
    rows = np.unique(np.linspace(first, first + n - 1, min(n, max_windows)).round().astype(np.int64))
    parts = []
    for i in tqdm(
        range(0, len(rows), batch), desc=f"attention over {split.name}", unit="batch", disable=not progress, leave=False
    ):
        obs = torch.from_numpy(flat_observations(market, rows[i : i + batch], window))
        parts.append(attention_weights(model, obs)[0].double().numpy())
    w = np.concatenate(parts)  # [N, W]
    entropy = -(w * np.log(np.clip(w, 1e-30, None))).sum(1)
    return AttentionStats(rows, w.mean(0), w.std(0), entropy, w[:, -NEWEST:].sum(1), window - 1 - w.argmax(1))


def input_names(n: int) -> list[str]:
    names = list(FEATURE_NAMES) + list(POSITION_NAMES)
    return names[:n] if n <= len(names) else [f"input_{i}" for i in range(n)]


def summarise(kernels: list[Kernel], stats: AttentionStats, window: int) -> dict:
    """The numbers behind the plots, JSON-able."""
    first = kernels[0]
    per_input = np.abs(first.weight).mean(axis=(0, 2))  # [C_in]: how strongly block 1 reads each input
    return {
        "kernels": [
            {
                "block": i + 1,
                "dilation": k.dilation,
                "shape": list(k.weight.shape),
                "lags": k.lags,
                "weight_norm": float(np.linalg.norm(k.weight)),
                "mean_abs_per_tap": [float(x) for x in k.mean_abs_per_tap()],
                "bn_folded_mean_abs_per_tap": [float(x) for x in k.mean_abs_per_tap(folded=True)],
            }
            for i, k in enumerate(kernels)
        ],
        "first_block_mean_abs_per_input": dict(zip(input_names(len(per_input)), map(float, per_input))),
        "attention": {
            "windows": int(len(stats.rows)),
            "mean_weight_oldest_first": [float(x) for x in stats.mean],
            f"newest_{NEWEST}_share": float(stats.newest_share.mean()),
            f"newest_{NEWEST}_share_uniform": NEWEST / window,
            "entropy_nats": float(stats.entropy.mean()),
            "entropy_nats_uniform": math.log(window),
            "effective_bars": float(np.exp(stats.entropy).mean()),
            "median_argmax_lag": float(np.median(stats.argmax_lag)),
            "newest_bar_weight": float(stats.mean[-1]),
        },
    }


def interpret(summary: dict, window: int) -> str:
    """One paragraph, every statement a number from `summary`."""
    att, kernels = summary["attention"], summary["kernels"]
    share = att[f"newest_{NEWEST}_share"]
    taps = []
    for k in kernels:
        folded = k["bn_folded_mean_abs_per_tap"]
        j = int(np.argmax(folded))
        taps.append(f"d={k['dilation']}: lag {k['lags'][j]} ({folded[j] / max(sum(folded), 1e-12):.0%})")
    market_inputs = {k: v for k, v in summary["first_block_mean_abs_per_input"].items() if k in FEATURE_NAMES}
    reads = sorted(market_inputs.items(), key=lambda kv: -kv[1])[:3]  # position inputs were 0 here
    return (
        f"Attention mass on the newest {NEWEST} of {window} bars: {share:.1%} "
        f"(uniform pooling would give {NEWEST / window:.1%}); mean entropy {att['entropy_nats']:.2f} nats "
        f"of at most {att['entropy_nats_uniform']:.2f}, i.e. about {att['effective_bars']:.1f} effective bars per "
        f"window, and the most attended bar lies a median {att['median_argmax_lag']:.0f} bars back "
        f"(over {att['windows']} windows). "
        + (
            "The pooling concentrates on recent bars. "
            if share > 2 * NEWEST / window
            else "The pooling spreads over the window rather than favouring recent bars. "
        )
        + "Strongest tap per block after folding BatchNorm (share of the block's mean |w|): "
        + "; ".join(taps)
        + ". Market features the first block weighs most (mean |w|): "
        + ", ".join(f"{name} ({value:.3f})" for name, value in reads)
        + ". The position state was flat in every window, so its inputs played no part."
    )
