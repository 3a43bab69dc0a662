"""Compute-device choice (CUDA when present, CPU otherwise) and the free memory of a device."""
import os

import torch

from mudsc.errors import ConfigError


def default_device(requested: str | torch.device | None = None) -> torch.device:
    """The device named by `requested` (or $MUDSC_DEVICE), else CUDA when available, else CPU.

    A name torch does not know, or a device this machine does not have, is a ConfigError saying so
    (before any work starts, rather than a driver's traceback at the first tensor moved there)."""
    name = requested or os.environ.get("MUDSC_DEVICE")
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {str(name)!r}: use cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    backend = getattr(torch, device.type, None)
    if backend is None or not backend.is_available():
        raise ConfigError(f"device {str(name)!r}: this machine has no {device.type} device; use cpu")
    count = backend.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigError(f"device {str(name)!r}: this machine has {count} {device.type} device(s), "
                          f"{device.type}:0 to {device.type}:{count - 1}")
    return device


def available_memory(device: torch.device | str) -> int:
    """Free bytes on `device`: CUDA's free memory, or the kernel's MemAvailable for the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
