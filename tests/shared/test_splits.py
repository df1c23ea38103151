import pytest

from shared.config import SplitConfig
from shared.splits import make_splits


def test_splits_are_chronological_with_a_window_gap():
    splits = make_splits(6106, SplitConfig(), window=64)
    train, validation, test = splits["train"], splits["validation"], splits["test"]
    usable = 6106 - 2 * 64
    assert (train.start, len(train)) == (0, round(0.7 * usable))
    assert len(validation) == round(0.15 * usable)
    assert validation.start - train.stop == 64 and test.start - validation.stop == 64
    assert test.stop == 6106
    # Decisions leave room for a full window before and a next price after.
    assert test.first_decision(64) == test.start + 63
    assert test.decisions(64) == len(test) - 64


def test_too_few_rows_is_a_clear_error():
    with pytest.raises(ValueError, match="too few for a validation split"):
        make_splits(300, SplitConfig(), window=64)
