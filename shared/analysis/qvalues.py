"""What the afterstate Q head says a trade is worth, against what the price then did
(``microzero analyze q``).

On every decision bar of a split, the two Q differences that decide trades:

    open   Q(Buy) - Q(Sell)    from flat: how much better long is than short, pips
    hold   Q(Hold) - Q(Close)  from a long entered on the bar before: what staying is worth

and the price's move over the next ``horizon`` bars. A Q head that knows what is at stake
has differences that follow the move, on the scale of the move; one that only sees the
direction has differences that correlate with it but are too small to pay a spread, and
the search, which compares them with the spread a trade costs, then rarely trades.
Where the series reverts to a known price (synthetic ``mean_reverting`` bars revert to
1.2), the slope of each difference on the distance from that level says how much of
the reversion the head holds: pips of difference per pip of distance.
"""

from __future__ import annotations

import numpy as np
import torch

from shared.actions import Action
from shared.analysis.tcn import flat_observations, observations_at
from shared.market import MarketData
from shared.model.networks import StochasticMuZeroNet

BATCH = 2048  # windows per forward pass: bounds memory on long splits


def long_observations(market: MarketData, rows: np.ndarray, window: int) -> np.ndarray:
    """[N, W, 15] observations at decision rows `rows` (each after the split's first
    decision), holding a long bought on the bar before, as the environment plays it."""
    return observations_at(market, rows, window, played=[Action.BUY])


@torch.no_grad()
def _q(model: StochasticMuZeroNet, obs: np.ndarray, action: Action) -> np.ndarray:
    """obs [N, W, F] -> Q of the afterstate of `action` [N], pips."""
    state = model.represent(torch.as_tensor(obs, device=model.device))
    actions = torch.full((len(obs),), int(action), dtype=torch.long, device=model.device)
    q_logits = model.afterstate_predict(model.afterstate(state, actions))[1]
    return model.to_scalar(q_logits).double().cpu().numpy()


def q_differences(
    model: StochasticMuZeroNet, market: MarketData, rows: np.ndarray, window: int
) -> dict[str, np.ndarray]:
    """rows [N] -> {"open": Q(Buy) - Q(Sell) from flat [N], "hold": Q(Hold) - Q(Close) from long [N]}."""
    model.eval()
    parts: dict[str, list[np.ndarray]] = {"open": [], "hold": []}
    for start in range(0, len(rows), BATCH):
        chunk = rows[start : start + BATCH]
        flat, long = flat_observations(market, chunk, window), long_observations(market, chunk, window)
        parts["open"].append(_q(model, flat, Action.BUY) - _q(model, flat, Action.SELL))
        parts["hold"].append(_q(model, long, Action.HOLD) - _q(model, long, Action.CLOSE))
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def _slope(y: np.ndarray, x: np.ndarray) -> float | None:
    """Least-squares slope of y on x; None where x does not vary."""
    dx = x - x.mean()
    return float((dx * (y - y.mean())).sum() / (dx * dx).sum()) if np.ptp(x) > 0 else None


def _corr(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation; None where either side is constant (a head that says the
    same everywhere has no correlation, and JSON has no NaN)."""
    return float(np.corrcoef(a, b)[0, 1]) if np.ptp(a) > 0 and np.ptp(b) > 0 else None


def summarise(differences: dict[str, np.ndarray], move: np.ndarray, distance: np.ndarray | None = None) -> dict:
    """Per difference: its mean and spread, its correlation with the coming move, and
    (given the distance from a reversion level, pips) its slope on that distance."""
    out = {}
    for name, d in differences.items():
        stats = {
            "mean": float(d.mean()),
            "std": float(d.std()),
            "corr_with_move": _corr(d, move),
        }
        if distance is not None:
            # The reversion pays when the price is below the level: slope on -distance.
            stats |= {
                "corr_with_level_gap": _corr(d, -distance),
                "slope_on_level_gap": _slope(d, -distance),
            }
        out[name] = stats
    out["move"] = {"std": float(move.std())}
    if distance is not None:
        out["move"]["slope_on_level_gap"] = _slope(move, -distance)
    return out
