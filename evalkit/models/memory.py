"""Memory accounting of a loaded model: the bytes its tensors really hold, and the peak of its load.

`get_memory_footprint()` is not enough: it sizes a torchao int8 weight at its float dtype and misses
tensors that are not parameters or buffers (bitsandbytes' scales, Baichuan's QLinear). The peak is
the process's resident set (reset at entry on Linux) and, on CUDA, torch's allocator peak.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


def _side_tensors(obj: object, depth: int) -> Iterator[torch.Tensor]:
    """Tensors hung on an object's attributes: bitsandbytes' CB/SCB and quant_state, Baichuan's QLinear."""
    for value in vars(obj).values():
        if isinstance(value, torch.Tensor):
            yield from _storage_tensors(value, depth)
        elif depth > 0 and hasattr(value, "__dict__") and not isinstance(value, (nn.Module, type)):
            yield from _side_tensors(value, depth - 1)


def _storage_tensors(tensor: torch.Tensor, depth: int = 3) -> Iterator[torch.Tensor]:
    """The plain tensors that hold a tensor's bytes: a quantized subclass (torchao) holds inner tensors."""
    if hasattr(type(tensor), "__tensor_flatten__"):
        for name in tensor.__tensor_flatten__()[0]:
            yield from _storage_tensors(getattr(tensor, name), depth)
        return
    yield tensor
    if depth > 0 and hasattr(tensor, "__dict__"):
        yield from _side_tensors(tensor, depth - 1)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every tensor the model holds, each storage counted once.

    Parameters, buffers, plain tensor attributes, the inner tensors of quantized subclasses and the
    scales hung on bitsandbytes parameters.
    """
    storages: dict[tuple[str, int], int] = {}
    for module in model.modules():
        held = [*module._parameters.values(), *module._buffers.values()]
        tensors = [t for t in held if t is not None]
        for tensor in (*(leaf for t in tensors for leaf in _storage_tensors(t)), *_side_tensors(module, 1)):
            if tensor.device.type != "meta":
                storage = tensor.untyped_storage()
                storages[(str(tensor.device), storage.data_ptr())] = storage.nbytes()
    return sum(storages.values())


@dataclass
class PeakMemory:
    """The peak of a `measure_peak_memory` block, filled when the block exits."""

    rss_bytes: int = 0  # peak resident set size of this process
    rss_scope: str = ""  # "block": the peak was reset at entry; "process": the peak since the process started
    cuda_bytes: int | None = None  # torch.cuda.max_memory_allocated over the block, on CUDA devices


def _reset_rss_peak() -> bool:
    # Linux resets VmHWM (the peak RSS) when "5" is written to clear_refs; elsewhere the peak is process-wide
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _rss_peak() -> int:
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource  # macOS: ru_maxrss is in bytes there, kilobytes on Linux

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


@contextmanager
def measure_peak_memory(device: str = "cpu") -> Iterator[PeakMemory]:
    """Measure the peak memory of a block: host RSS always, CUDA allocations too on a CUDA device."""
    peak = PeakMemory(rss_scope="block" if _reset_rss_peak() else "process")
    on_cuda = device.startswith("cuda")
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    try:
        yield peak
    finally:
        peak.rss_bytes = _rss_peak()
        if on_cuda:
            peak.cuda_bytes = torch.cuda.max_memory_allocated(device)
