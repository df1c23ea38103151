"""Fixtures several test modules share."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A bar store folder shared by one module's tests."""
    return tmp_path_factory.mktemp("bars")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Two shared cores and tiny networks: intra-op threads gain nothing, and several
    torch users in one process would oversubscribe (the search slows tenfold).
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
