"""Chronological train / validation / test splits of a feature matrix.

A split is a half-open range of feature rows. Splits follow each other in time with a
gap of one observation window between them, so no observation window of one split
shares a bar with another split. Inside a split, the first ``window - 1`` rows only
serve as the context of the first observation, and the last row only as the price
the last decision is marked to: decisions happen at rows
``start + window - 1 .. stop - 2``.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.config import SplitConfig

SPLIT_NAMES = ("train", "validation", "test")


@dataclass(frozen=True)
class Split:
    name: str
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    def first_decision(self, window: int) -> int:
        return self.start + window - 1

    def decisions(self, window: int) -> int:
        """How many decision bars the split holds for observations of `window` bars."""
        return max(0, self.stop - 1 - self.first_decision(window))


def make_splits(n_rows: int, fractions: SplitConfig, window: int) -> dict[str, Split]:
    """Split `n_rows` feature rows 70/15/15 (by default) with `window`-row gaps."""
    usable = n_rows - 2 * window
    n_train = round(fractions.train * usable)
    n_validation = round(fractions.validation * usable)
    sizes = (n_train, n_validation, usable - n_train - n_validation)
    splits, start = {}, 0
    for name, size in zip(SPLIT_NAMES, sizes):
        split = Split(name, start, start + size)
        if split.decisions(window) < 1:
            raise ValueError(
                f"{n_rows} feature rows are too few for a {name} split with a window of {window} bars "
                f"(it would get {size} rows, needs at least {window + 1})"
            )
        splits[name] = split
        start += size + window
    return splits
