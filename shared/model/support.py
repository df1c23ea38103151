"""Scalars <-> categorical distributions, as in MuZero (Schrittwieser et al. 2020, App. F).

Values, rewards and Q are predicted as categorical distributions over a fixed support.
Targets are first squashed with the invertible transform

    h(x)     = sign(x) (sqrt(|x| + 1) - 1) + eps x
    h^-1(y)  = sign(y) (((sqrt(1 + 4 eps (|y| + 1 + eps)) - 1) / (2 eps))^2 - 1)

and then projected "two-hot" onto the two nearest support bins.

Choice of support: the bins are `bins` points spaced *evenly in h-space* over
[h(-vmax), h(vmax)] (41 bins over [-300, 300] pips by default; h(300) ~= 16.65, so
the spacing is ~0.83 in h-space). With an odd bin count the middle bin is exactly
0. Because the projection and the expectation are both linear in h-space, a two-hot
target decoded with :func:`support_to_scalar` gives back h(x) exactly, hence x exactly
(up to rounding) anywhere in [-vmax, vmax]; values outside are clipped to +-vmax.
Resolution is finest near 0 (where most per-step rewards live) and coarsest at +-vmax.

Both functions compute in float64 internally (the arrays are [.., 41], so this is
cheap even on a GPU) and return the input's float dtype: in float32 the cancellation
in h^-1 would cost ~1e-3 pips at +-300.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

DEFAULT_BINS = 41
DEFAULT_VMAX = 300.0
DEFAULT_EPS = 1e-3


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


@functools.lru_cache(maxsize=16)
def _support_table(bins: int, vmax: float, eps: float, device: torch.device) -> Tensor:
    """:func:`support` in float64 on device, built once per key and shared: callers must not write to it.

    Built outside inference mode, so that autograd may save it for backward (training
    reads it too).
    """
    with torch.inference_mode(False):
        return support(bins, vmax, eps, device=device)


def _out_dtype(t: Tensor) -> torch.dtype:
    return t.dtype if t.is_floating_point() else torch.float32


def scalar_to_support(
    x: Tensor, bins: int = DEFAULT_BINS, vmax: float = DEFAULT_VMAX, eps: float = DEFAULT_EPS
) -> Tensor:
    """Two-hot projection of scalars: x [..] -> probs [.., bins] (each row sums to 1)."""
    centres = _support_table(bins, vmax, eps, x.device)  # [bins]
    y = h(x.to(torch.float64).clamp(-vmax, vmax), eps)  # [..]
    pos = (y - centres[0]) / (centres[1] - centres[0])  # [..] in [0, bins-1]
    pos = pos.clamp(0, bins - 1)
    lower = pos.floor().clamp(max=bins - 2)  # [..]
    upper_weight = pos - lower  # [..] in [0, 1]
    probs = torch.zeros(*x.shape, bins, device=x.device, dtype=torch.float64)  # [.., bins]
    lower = lower.long().unsqueeze(-1)
    probs.scatter_(-1, lower, (1 - upper_weight).unsqueeze(-1))
    probs.scatter_(-1, lower + 1, upper_weight.unsqueeze(-1))
    return probs.to(_out_dtype(x))


def support_to_scalar(logits: Tensor, vmax: float = DEFAULT_VMAX, eps: float = DEFAULT_EPS) -> Tensor:
    """Expected scalar of a categorical: logits [.., bins] -> x [..].

    The expectation is taken in h-space (softmax-weighted mean of the bin centres),
    then mapped back with h^-1.
    """
    centres = _support_table(logits.shape[-1], vmax, eps, logits.device)  # [bins]
    probs = torch.softmax(logits.to(torch.float64), dim=-1)  # [.., bins]
    y = (probs * centres).sum(-1)  # [..]
    return h_inverse(y, eps).to(_out_dtype(logits))
