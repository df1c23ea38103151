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


def pytest_collection_modifyitems(config, items) -> None:
    """`docker` tests build an image and run the whole compose stack for many minutes:
    the default run (the README's test command) leaves them out; `-m docker` runs them.
    Not done with `-m 'not docker'` in addopts: a user's own `-m` would replace it."""
    if "docker" in (config.option.markexpr or ""):
        return
    kept = [item for item in items if item.get_closest_marker("docker") is None]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept
