"""Compute-device choice: CUDA when present, CPU otherwise."""
import torch


def default_device(requested: str | None = None) -> torch.device:
    """The device named by `requested` (or $MUDSC_DEVICE), else CUDA when available, else CPU."""
    import os

    name = requested or os.environ.get("MUDSC_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
