"""Figures of ``microzero analyze tcn`` as PNG bytes.

``matplotlib.figure.Figure`` directly, never pyplot: no global figure state and no
display backend (as in ``shared.evaluation.plots``).
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure

from shared.analysis.tcn import NEWEST, AttentionStats, Kernel


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def kernels_png(kernels: list[Kernel]) -> bytes:
    """Per block: heatmap of the weights [C_out x (tap, C_in)], columns grouped by tap
    (oldest lag left), and the mean |w| per tap, raw and BatchNorm-folded."""
    fig = Figure(figsize=(12, 2.8 * len(kernels)))
    axes = fig.subplots(len(kernels), 2, squeeze=False, gridspec_kw={"width_ratios": [4, 1]})
    for (heat, bars), kernel in zip(axes, kernels):
        out_ch, in_ch, k = kernel.weight.shape
        grid = kernel.weight.transpose(0, 2, 1).reshape(out_ch, k * in_ch)  # column = tap * C_in + input
        limit = float(np.abs(grid).max()) or 1.0
        image = heat.imshow(grid, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        for j in range(1, k):
            heat.axvline(j * in_ch - 0.5, color="black", linewidth=0.8)
        heat.set_xticks([(j + 0.5) * in_ch - 0.5 for j in range(k)], [f"lag {lag}" for lag in kernel.lags])
        heat.set_ylabel("output channel")
        heat.set_title(f"dilation {kernel.dilation}: conv weight [{out_ch} out x ({k} taps x {in_ch} in)]", fontsize=9)
        fig.colorbar(image, ax=heat, fraction=0.03, pad=0.01)
        raw, folded = kernel.mean_abs_per_tap(), kernel.mean_abs_per_tap(folded=True)
        x = np.arange(k)
        bars.bar(x - 0.2, raw / raw.sum(), 0.4, label="raw")
        bars.bar(x + 0.2, folded / folded.sum(), 0.4, label="BN-folded")
        bars.set_xticks(x, [str(lag) for lag in kernel.lags])
        bars.set_xlabel("lag [bars]")
        bars.set_ylabel("share of mean |w|")
        bars.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def attention_mean_png(stats: AttentionStats, window: int) -> bytes:
    """Mean (+- 1 std) attention weight per bar over the averaged windows."""
    fig = Figure(figsize=(9, 3.6))
    ax = fig.subplots()
    back = np.arange(1 - window, 1)  # bars relative to the decision bar, oldest first
    ax.fill_between(
        back, np.clip(stats.mean - stats.std, 0, None), stats.mean + stats.std, alpha=0.25, label="+- 1 std"
    )
    ax.plot(back, stats.mean, marker=".", label=f"mean over {len(stats.rows)} windows")
    ax.axhline(1 / window, color="grey", linestyle="--", linewidth=1, label="uniform 1/W")
    ax.axvspan(
        -NEWEST + 0.5,
        0.5,
        color="orange",
        alpha=0.12,
        label=f"newest {NEWEST}: {stats.newest_share.mean():.0%} of the mass",
    )
    ax.set_xlabel("bar relative to the decision bar (0 = newest)")
    ax.set_ylabel("attention weight")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def attention_samples_png(samples: list[tuple[str, np.ndarray, np.ndarray]], window: int) -> bytes:
    """One panel per (title, weights [W], close [W]) sample window: weights as bars,
    the window's close prices on a second axis."""
    fig = Figure(figsize=(9, 2.4 * len(samples)))
    axes = fig.subplots(len(samples), 1, squeeze=False)[:, 0]
    back = np.arange(1 - window, 1)
    for ax, (title, weights, close) in zip(axes, samples):
        ax.bar(back, weights, color="#2a9d8f", width=0.9)
        ax.axhline(1 / window, color="grey", linestyle="--", linewidth=1)
        ax.set_ylabel("attention")
        ax.set_title(title, fontsize=9)
        price = ax.twinx()
        price.plot(back, close, color="black", linewidth=1)
        price.set_ylabel("close")
    axes[-1].set_xlabel("bar relative to the decision bar (0 = newest)")
    fig.tight_layout()
    return _png(fig)
