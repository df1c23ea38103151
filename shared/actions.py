"""The four trading actions and the rule that says which are legal.

Legality depends only on the side held (-1 short, 0 flat, +1 long), so anything that
tracks the side (the environment, the search tree) derives the mask the same way.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Action(IntEnum):
    HOLD = 0
    BUY = 1
    SELL = 2
    CLOSE = 3


NUM_ACTIONS = len(Action)

# LEGAL_BY_SIDE[side + 1] is the mask for that side: Buy is illegal when long, Sell when
# short, Close when flat; Hold is always legal.
LEGAL_BY_SIDE = np.array(
    [
        [True, True, False, True],  # short
        [True, True, True, False],  # flat
        [True, False, True, True],  # long
    ]
)

# SIDE_AFTER[side + 1, action] is the side held after taking ``action`` from ``side``
# (only meaningful for legal actions; Buy when short and Sell when long reverse).
SIDE_AFTER = np.array(
    [
        [-1, 1, -1, 0],
        [0, 1, -1, 0],
        [1, 1, -1, 0],
    ],
    dtype=np.int8,
)


def legal_mask(side: np.ndarray) -> np.ndarray:
    """Legal-action mask ``[..., 4]`` (bool) for an integer array of sides."""
    return LEGAL_BY_SIDE[np.asarray(side, dtype=np.int64) + 1]


def side_after(side: np.ndarray, action: np.ndarray) -> np.ndarray:
    """Side held after ``action`` from ``side`` (same shape as the broadcast inputs)."""
    return SIDE_AFTER[np.asarray(side, dtype=np.int64) + 1, np.asarray(action, dtype=np.int64)]
