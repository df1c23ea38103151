"""Scalars <-> categorical distributions, as in MuZero (Schrittwieser et al. 2020, App. F).

Values, rewards and Q are predicted as categorical distributions over a fixed support.
The bins are placed with the invertible transform

    h(x)     = sign(x) (sqrt(|x| + 1) - 1) + eps x
    h^-1(y)  = sign(y) (((sqrt(1 + 4 eps (|y| + 1 + eps)) - 1) / (2 eps))^2 - 1)

`bins` points spaced *evenly in h-space* over [h(-vmax), h(vmax)] (41 bins over
[-300, 300] pips by default; h(300) ~= 16.65, a spacing of ~0.83 in h-space). With an
odd bin count the middle bin is exactly 0. Resolution is finest near 0 (where most
per-step rewards live) and coarsest at +-vmax; values outside are clipped to +-vmax.

A scalar target is projected "two-hot" onto its two neighbouring bins, and a
prediction decoded as its expectation, both linearly in one `space`:

* ``"h"`` (the default, MuZero's): linear in h-space, then mapped back with h^-1.
  Cross-entropy against two-hot targets is minimised by their average two-hot, so the
  head learns h^-1(E[h(z)]), not E[z]: h compresses large |z|, so the mean of noisy
  targets is shrunk toward 0 (with 8.7 pips of target noise, a mean of 5 pips is
  learned as 3.3), and a bootstrapped value shrinks again at every step.
* ``"pips"``: linear in the scalar itself, between the bins' pip values h^-1(centre):
  the head learns the targets' *mean*, as a regression head would. Not shown to help
  (ModelConfig.support_space, docs/RESULTS.md §0 "Support space"): the shrinking also
  damps the optimism of values bootstrapped from the best-looking noisy Q.

Either way a two-hot target decodes back to its scalar exactly (up to rounding).
Both functions compute in float64 internally (the arrays are [.., 41], so this is
cheap even on a GPU) and return the input's float dtype: in float32 the cancellation
in h^-1 would cost ~1e-3 pips at +-300.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
from torch import Tensor

DEFAULT_BINS = 41
DEFAULT_VMAX = 300.0
DEFAULT_EPS = 1e-3
SupportSpace = Literal["pips", "h"]


def h(x: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """The MuZero value transform, elementwise."""
    return torch.sign(x) * (torch.sqrt(x.abs() + 1) - 1) + eps * x


def h_inverse(y: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """Exact inverse of :func:`h`, elementwise.

    (sqrt(1+z) - 1) / (2 eps) with z = 4 eps (|y| + 1 + eps) is rewritten as
    2 (|y| + 1 + eps) / (sqrt(1+z) + 1), which avoids the cancellation.
    """
    a = y.abs() + 1 + eps
    root = 2 * a / (torch.sqrt(1 + 4 * eps * a) + 1)  # = sqrt(|x| + 1)
    return torch.sign(y) * (root * root - 1)


def support(
    bins: int = DEFAULT_BINS,
    vmax: float = DEFAULT_VMAX,
    eps: float = DEFAULT_EPS,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """The bin centres in h-space, [bins], evenly spaced over [h(-vmax), h(vmax)]."""
    top = float(h(torch.tensor(vmax, dtype=torch.float64), eps))
    return torch.linspace(-top, top, bins, device=device, dtype=dtype)


@functools.lru_cache(maxsize=32)
def _support_table(bins: int, vmax: float, eps: float, device: torch.device, space: SupportSpace) -> Tensor:
    """The bin centres in `space` (h-space, or their pip values h^-1), float64 on device,
    built once per key and shared: callers must not write to it.

    Built outside inference mode, so that autograd may save it for backward (training
    reads it too).
    """
    if space not in ("pips", "h"):
        raise ValueError(f"support space must be 'pips' or 'h', got {space!r}")
    with torch.inference_mode(False):
        centres = support(bins, vmax, eps, device=device)
        return h_inverse(centres, eps) if space == "pips" else centres


def _out_dtype(t: Tensor) -> torch.dtype:
    return t.dtype if t.is_floating_point() else torch.float32


def scalar_to_support(
    x: Tensor,
    bins: int = DEFAULT_BINS,
    vmax: float = DEFAULT_VMAX,
    eps: float = DEFAULT_EPS,
    space: SupportSpace = "h",
) -> Tensor:
    """Two-hot projection of scalars: x [..] -> probs [.., bins] (each row sums to 1),
    linear between the two neighbouring bins in `space`."""
    centres = _support_table(bins, vmax, eps, x.device, space)  # [bins], increasing
    y = x.to(torch.float64).clamp(-vmax, vmax)  # [..]
    if space == "h":  # evenly spaced: the bin position is arithmetic
        pos = ((h(y, eps) - centres[0]) / (centres[1] - centres[0])).clamp(0, bins - 1)  # [..] in [0, bins-1]
        lower = pos.floor().clamp(max=bins - 2)  # [..]
        upper_weight = pos - lower  # [..] in [0, 1]
    else:  # pip values of h-spaced bins are uneven: look the bin up
        lower = (torch.searchsorted(centres, y.unsqueeze(-1), right=True).squeeze(-1) - 1).clamp(0, bins - 2)
        low, high = centres[lower], centres[lower + 1]  # [..]
        upper_weight = ((y - low) / (high - low)).clamp(0, 1)  # [..]
    probs = torch.zeros(*x.shape, bins, device=x.device, dtype=torch.float64)  # [.., bins]
    lower = lower.long().unsqueeze(-1)
    probs.scatter_(-1, lower, (1 - upper_weight).unsqueeze(-1))
    probs.scatter_(-1, lower + 1, upper_weight.unsqueeze(-1))
    return probs.to(_out_dtype(x))


def support_to_scalar(
    logits: Tensor, vmax: float = DEFAULT_VMAX, eps: float = DEFAULT_EPS, space: SupportSpace = "h"
) -> Tensor:
    """Expected scalar of a categorical: logits [.., bins] -> x [..].

    The softmax-weighted mean of the bin centres in `space` (for "h", mapped back
    with h^-1).
    """
    centres = _support_table(logits.shape[-1], vmax, eps, logits.device, space)  # [bins]
    probs = torch.softmax(logits.to(torch.float64), dim=-1)  # [.., bins]
    y = (probs * centres).sum(-1)  # [..]
    return (h_inverse(y, eps) if space == "h" else y).to(_out_dtype(logits))
