"""Picking the torch device: the one rule every command and service uses."""

from __future__ import annotations

import torch


def pick_device(name: str | torch.device | None = None) -> torch.device:
    """`name` if given (``cuda`` must then be available), else cuda when available, else cpu.

    ``None`` and ``"auto"`` mean "cuda if available"; asking for ``cuda`` on a machine
    without it is a ValueError with a clear message (the CLI prints it, exit code 2).
    """
    if name is None or str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {name} requested but CUDA is not available (torch {torch.__version__}); use --device cpu"
        )
    return device
