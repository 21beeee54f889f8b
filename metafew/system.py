"""The machine a command runs on: the memory allocator, the device, the CPU threads."""

from __future__ import annotations

import torch

from metafew.errors import ConfigError


def resolve_device(spec: str) -> torch.device:
    """runtime.device: `auto` -> cuda if available else cpu; anything else must be available."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"runtime.device = {spec!r}: expected cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"runtime.device = {spec!r}: CUDA is not available here; use runtime.device=cpu")
    return device


def set_threads(threads: int) -> None:
    """runtime.threads: torch's CPU threads (0 keeps torch's default)."""
    if threads:
        torch.set_num_threads(threads)


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux's MemAvailable), or None elsewhere."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
