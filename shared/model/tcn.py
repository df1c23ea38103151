"""Causal temporal convolution network (Bai, Kolter & Koltun 2018, one conv per block).

    x [B, T, F]  (oldest bar first)
      -> transpose            [B, F, T]
      -> block(dilation=1)    [B, C, T]   each block: left-pad d*(k-1), Conv1d(dilation=d),
      -> block(dilation=2)    [B, C, T]   BatchNorm1d, ReLU, Dropout, + residual
      -> block(dilation=4)    [B, C, T]   (1x1 conv on the residual when F != C)
      -> block(dilation=8)    [B, C, T]
      -> transpose            [B, T, C]

Output t depends only on inputs t-R+1..t, R = 1 + (k-1)*sum(dilations) = 31 bars by
default, because every convolution is padded on the left only.

Causality and BatchNorm: in *eval* mode BatchNorm applies fixed running statistics,
so the network is strictly causal. In *train* mode the batch statistics are computed
over batch and time, so a later bar of the window shifts the normalisation of an
earlier one (a weak, aggregate leak of the future). That is harmless here, because the
representation pools the whole window into one state for the newest bar, but anything
that reads per-step outputs as causal features must use eval mode, and the search
(collectors, validator, api) must run the model in eval mode. Tests check causality in
eval mode.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class CausalConvBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel: int, dilation: int, dropout: float):
        super().__init__()
        self.left_pad = dilation * (kernel - 1)
        self.conv = nn.Conv1d(in_channels, out_channels, kernel, dilation=dilation)
        self.norm = nn.BatchNorm1d(out_channels)
        self.dropout = nn.Dropout(dropout)
        # 1x1 projection so the residual matches the output width.
        self.skip = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, C_in, T]
        y = self.conv(F.pad(x, (self.left_pad, 0)))  # [B, C_out, T], y[t] sees x[t - pad .. t]
        y = self.dropout(F.relu(self.norm(y)))
        return y + self.skip(x)  # [B, C_out, T]


class TCN(nn.Module):
    def __init__(self, in_features: int, channels: int, kernel: int, dilations: tuple[int, ...], dropout: float):
        super().__init__()
        widths = [in_features] + [channels] * len(dilations)
        self.blocks = nn.Sequential(
            *(CausalConvBlock(widths[i], widths[i + 1], kernel, d, dropout) for i, d in enumerate(dilations))
        )

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, T, F] -> [B, T, C]
        return self.blocks(x.transpose(1, 2)).transpose(1, 2)
