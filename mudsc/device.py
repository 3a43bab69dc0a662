"""Compute-device choice (CUDA when present, CPU otherwise) and the free memory of a device."""
import os

import torch


def default_device(requested: str | None = None) -> torch.device:
    """The device named by `requested` (or $MUDSC_DEVICE), else CUDA when available, else CPU."""
    name = requested or os.environ.get("MUDSC_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
