"""The machine under a generation benchmark: device-synchronised timing, the memory-bandwidth probe
behind the decode bound and how busy the machine was during the repeats (the software/hardware record is
evalkit.machine.environment, shared with run.json).

Nothing here loads or runs a model (the figures' definitions are in evalkit.bench.hf_bench).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import torch

from evalkit.bench.schema import BandwidthProbe, MachineLoad

PROBE_BYTES = 256 * 2**20


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: str) -> tuple[float, Any]:
    """Seconds of `fn()` and its result, between device synchronisations (CUDA work is asynchronous)."""
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def last_level_cache_bytes(device: str) -> int | None:
    """GPU L2 or the largest CPU cache listed by Linux sysfs; None elsewhere."""
    if device.startswith("cuda"):
        return int(torch.cuda.get_device_properties(device).L2_cache_size)
    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        match = re.fullmatch(r"(\d+)([KMG]?)", entry.read_text().strip())
        if match:
            sizes.append(int(match[1]) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[match[2]])
    return max(sizes, default=None)


def probe_bandwidth(device: str, buffer_bytes: int | None = None, repeats: int = 5) -> BandwidthProbe:
    """Copy a float32 buffer ≥ 4× the last-level cache so the figure is DRAM/HBM, not cache, speed."""
    llc = last_level_cache_bytes(device)
    size = buffer_bytes or max(PROBE_BYTES, 4 * (llc or 0))
    src = torch.ones(size // 4, dtype=torch.float32, device=device)  # ones: pages touched before timing
    dst = torch.empty_like(src)
    dst.copy_(src)
    values = [2 * size / timed(lambda: dst.copy_(src), device)[0] / 1e9 for _ in range(repeats)]
    return BandwidthProbe(device, size, max(values), tuple(values), torch.get_num_threads(), llc)


class LoadMeter:
    """psutil counters around the timed repeats."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.load_start = psutil.getloadavg()[0]
        psutil.cpu_percent(interval=None)
        self.process.cpu_percent(interval=None)

    def stop(self) -> MachineLoad:
        system, mine = psutil.cpu_percent(interval=None), self.process.cpu_percent(interval=None)
        cpus = psutil.cpu_count()
        others = max(0.0, system / 100 * cpus - mine / 100)
        return MachineLoad(self.load_start, psutil.getloadavg()[0], system, mine, round(others, 2), cpus)
