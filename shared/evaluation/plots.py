"""The report's figures as PNG bytes.

``matplotlib.figure.Figure`` directly, never pyplot: no global figure state and no
display backend, so this runs in services, tests and threads alike.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure

from shared.actions import Action

ACTION_COLOURS = {Action.HOLD: "#b0b0b0", Action.BUY: "#2a9d8f", Action.SELL: "#e76f51", Action.CLOSE: "#264653"}
_SIZE = (9.0, 3.6)


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _time_axis(fig: Figure, ax) -> None:
    ax.grid(True, alpha=0.3)
    ax.set_xlabel("bar time (UTC)")
    fig.autofmt_xdate()


def equity_png(ts: np.ndarray, bar_pnl: dict[str, np.ndarray]) -> bytes:
    """Cumulative net pips of each policy over the decision bars `ts`; "agent" drawn bold."""
    fig = Figure(figsize=_SIZE)
    ax = fig.subplots()
    for name, pnl in bar_pnl.items():
        bold = name == "agent"
        ax.plot(ts, np.cumsum(pnl), label=name, linewidth=2.2 if bold else 1.0, zorder=3 if bold else 2)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_ylabel("equity [pips, net of spread]")
    ax.legend(loc="best", fontsize=8)
    _time_axis(fig, ax)
    return _png(fig)


def drawdown_png(ts: np.ndarray, bar_pnl: np.ndarray) -> bytes:
    """Distance below the running peak of the equity (the start, 0, counts as a peak)."""
    equity = np.cumsum(bar_pnl)
    drawdown = equity - np.maximum.accumulate(np.maximum(equity, 0.0))
    fig = Figure(figsize=_SIZE)
    ax = fig.subplots()
    ax.fill_between(ts, drawdown, 0.0, color="#c0392b", alpha=0.5)
    ax.plot(ts, drawdown, color="#c0392b", linewidth=0.8)
    ax.set_ylabel("drawdown [pips]")
    _time_axis(fig, ax)
    return _png(fig)


def trade_histogram_png(net_pips: np.ndarray) -> bytes:
    """Histogram of net pips per trade, with zero and the mean marked."""
    fig = Figure(figsize=_SIZE)
    ax = fig.subplots()
    if len(net_pips) == 0:
        ax.text(0.5, 0.5, "no trades", ha="center", va="center", fontsize=16, transform=ax.transAxes)
    else:
        bins = int(np.clip(np.sqrt(len(net_pips)) * 2, 10, 60))
        ax.hist(net_pips, bins=bins, color="#457b9d", edgecolor="white")
        ax.axvline(0.0, color="black", linewidth=0.8, label="0")
        ax.axvline(float(np.mean(net_pips)), color="#e63946", linestyle="--", label=f"mean {np.mean(net_pips):.1f}")
        ax.legend(fontsize=8)
    ax.set_xlabel("net pips per trade")
    ax.set_ylabel("trades")
    ax.grid(True, alpha=0.3)
    return _png(fig)


def action_share(actions: np.ndarray, block: int) -> np.ndarray:
    """[blocks, 4] share of each action per consecutive block of `block` bars (the last
    block may be shorter)."""
    starts = np.arange(0, len(actions), block)
    counts = np.stack([np.bincount(actions[s : s + block], minlength=4)[:4] for s in starts])
    return counts / counts.sum(axis=1, keepdims=True)


def actions_png(ts: np.ndarray, actions: np.ndarray, block: int) -> bytes:
    """Stacked share of Hold/Buy/Sell/Close per block of `block` decision bars."""
    share = action_share(actions.astype(np.int64), block)
    # Steps start at each block's first bar; repeating the last block at the last bar
    # gives it its width.
    at = np.append(ts[np.arange(0, len(actions), block)], ts[len(actions) - 1])
    share = np.vstack([share, share[-1:]])
    fig = Figure(figsize=_SIZE)
    ax = fig.subplots()
    ax.stackplot(
        at,
        share.T,
        step="post",
        labels=[a.name.title() for a in ACTION_COLOURS],
        colors=list(ACTION_COLOURS.values()),
    )
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"share of actions per {block} bars")
    ax.legend(loc="upper left", fontsize=8, ncol=4)
    _time_axis(fig, ax)
    return _png(fig)
