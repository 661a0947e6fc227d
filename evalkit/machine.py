"""The machine a run is on: this process's device under `accelerate launch`, the environment record
(run.json and the bench report), and freeing a model's memory before the next one loads.

torch and accelerate are imported where they are used: `machine` is imported by the CLI's dispatch.
"""

from __future__ import annotations

import gc
import os
import platform
import re
import subprocess
from datetime import timedelta
from importlib import metadata
from pathlib import Path

from evalkit.store.records import Environment
from evalkit.types import EvalkitError, unknown

# versions recorded with every run and bench report
PACKAGES = ("evalkit", "torch", "transformers", "tokenizers", "accelerate", "datasets", "bitsandbytes")


# ---- devices ----

DEVICES = ("auto", "cpu", "cuda", "cuda:N")  # what --device takes
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")  # what --device-map takes


def resolve_device(device: str) -> str:
    """--device as torch names it: "auto" becomes cuda where torch sees a GPU, else cpu."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EvalkitError(
            f"--device {device} asked for, but torch sees no CUDA device (torch {torch.__version__})"
        )
    if device != "cpu" and not device.startswith("cuda"):
        raise unknown("device", device, DEVICES)
    return device


# ---- processes (accelerate launch) ----


def process_device(device: str) -> str:
    """This process's device; under `accelerate launch` each process takes its own (gloo on CPU, nccl on
    GPU)."""
    import torch
    from accelerate import PartialState

    resolved = resolve_device(device)
    # a long timeout: the processes meet only at the end of each task, after hours of scoring
    state = PartialState(cpu=resolved == "cpu", timeout=timedelta(hours=48))
    if state.num_processes == 1:
        return resolved
    if resolved != "cpu" and not device.startswith("cuda:"):
        torch.cuda.set_device(state.local_process_index)
        return f"cuda:{state.local_process_index}"
    return resolved


def is_single_process() -> bool:
    from accelerate import PartialState

    return PartialState().num_processes == 1


def is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


# ---- memory ----


def free_memory() -> None:
    """Return a dropped model's memory before the next loads: the caller deletes its last reference first.

    gc.collect breaks the reference cycles modules keep; empty_cache hands CUDA's cached blocks back, so the
    next variant (and the peak-memory figures measured while it loads) start from an empty device.
    """
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---- the environment record ----


def environment(device: str, processes: int = 1) -> Environment:
    """Versions, device, threads and evalkit's commit, recorded beside figures (comparable on one stack)."""
    import torch

    versions: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else _cpu_name()
    return Environment(
        packages=versions,
        python=platform.python_version(),
        platform=platform.platform(),
        device=device,
        device_name=name,
        cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        processes=processes,
        git_commit=_git_commit(),
    )


def _cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() is often empty on Linux)."""
    cpuinfo = Path("/proc/cpuinfo")
    names = re.findall(r"model name\s*:\s*(.+)", cpuinfo.read_text()) if cpuinfo.exists() else []
    return names[0].strip() if names else platform.processor() or platform.machine()


def _git_commit() -> str | None:
    repo = Path(__file__).resolve().parents[1]
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None
