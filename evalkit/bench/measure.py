"""The timed part of a generation benchmark, shared by every backend's bench: warm-up, the paired T_1 / T_N
repeats (`measure`), one row's figures from them (`make_row`), its log line, and torch's thread count for the
block. The figures' definitions are in evalkit.bench.hf_bench's docstring.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from evalkit.bench.schema import MIB, BandwidthProbe, BenchRow, BenchSettings, MachineLoad, Stat
from evalkit.bench.timing import LoadMeter, probe_bandwidth
from evalkit.models.memory import PeakMemory, measure_peak_memory
from evalkit.types import EvalkitError

log = logging.getLogger(__name__)


def _warm_up(call: Callable[[int], float], settings: BenchSettings, device: str) -> float:
    started = time.perf_counter()
    try:
        for _ in range(settings.warmup):
            call(1)
            call(settings.new_tokens)
    except torch._dynamo.exc.BackendCompilerFailed as exc:
        raise EvalkitError(
            f"torch.compile ({settings.compile_backend}) failed on {device}: "
            f"{str(exc).splitlines()[0]}; use --mode eager"
        ) from exc
    return time.perf_counter() - started


def _notes(row: BenchRow, settings: BenchSettings) -> tuple[str, ...]:
    """What a reader must know to trust (or not) the row's figures."""
    notes = []
    if row.decode_tok_s is None:
        notes.append(
            f"no repeat's {row.new_tokens}-token generate outlasted its 1-token one: timer noise "
            f"swamps decode at this length, so decode tok/s is not given; use more --new-tokens"
        )
    elif len(row.decode_tok_s.values) < settings.repeats:
        notes.append(
            f"decode tok/s over {len(row.decode_tok_s.values)} of {settings.repeats} repeats: "
            f"in the others timer noise swamped decode"
        )
    beats_bound = row.achieved_fraction is not None and row.achieved_fraction > 1
    if beats_bound and row.cache_resident:
        notes.append(
            f"decode beats the bandwidth bound: the {row.bytes_per_step / MIB:.2f} MiB read per "
            f"step fit in the last-level cache, so they are not re-read from memory; "
            f"the bound does not apply"
        )
    elif beats_bound:
        notes.append(
            "decode beats the bandwidth bound: caches serve part of each step, or the copy probe "
            "undercounts memory traffic (write-allocate); read the bound as approximate"
        )
    if settings.mode == "compiled" and not row.compiled:
        notes.append(
            "torch.compile did not engage (transformers declined, e.g. a quantizer that cannot "
            "compile): figures are static-cache eager"
        )
    if row.compiled:
        notes.append(f"compilation + warmup took {row.warmup_s:.1f} s (excluded from the figures)")
    if settings.repeats < 3:
        notes.append(
            f"only {settings.repeats} timed repeat(s): medians of fewer than 3 do not resist outliers"
        )
    if row.load.other_cores_busy >= 0.5:
        notes.append(
            f"other processes kept {row.load.other_cores_busy:.1f} cores busy during the timed repeats"
        )
    return tuple(notes)


@dataclass(frozen=True)
class Timing:
    """The timed repeats of one row and the conditions around them (`measure`)."""

    pairs: tuple[tuple[float, float], ...]  # (T_1, T_N) seconds per repeat
    bandwidth: BandwidthProbe  # probed just before and after the repeats; gb_s is the best of both
    peak: PeakMemory  # over the timed repeats
    load: MachineLoad
    warmup_s: float


def measure(call: Callable[[int], float], settings: BenchSettings, device: str) -> Timing:
    """Warm up, then time `settings.repeats` pairs of `call(1)` and `call(N)` (seconds each) between two
    bandwidth probes."""
    warmup_s = _warm_up(call, settings, device)
    before = probe_bandwidth(device, settings.probe_bytes)
    with measure_peak_memory(device) as peak:
        meter = LoadMeter()
        pairs = tuple((call(1), call(settings.new_tokens)) for _ in range(settings.repeats))
        load = meter.stop()
    after = probe_bandwidth(device, settings.probe_bytes)
    bandwidth = dataclasses.replace(
        before, gb_s=max(before.gb_s, after.gb_s), values_gb_s=before.values_gb_s + after.values_gb_s
    )
    return Timing(pairs, bandwidth, peak, load, warmup_s)


def make_row(
    timing: Timing,
    settings: BenchSettings,
    *,
    batch_size: int,
    weight_read: int,
    kv_per_token: int,
    context: float,
    **conditions: Any,
) -> BenchRow:
    """The row of one `measure`: figures and bound as the module docstring defines them, the bytes per
    step from `weight_read` + B x `kv_per_token` x `context` (the mean positions a step attends to), and
    the notes. `conditions` are the BenchRow fields that say what ran (model, precision, mode, ...)."""
    B, P, N = batch_size, settings.prompt_tokens, settings.new_tokens
    pairs, bandwidth, peak = timing.pairs, timing.bandwidth, timing.peak
    step_bytes = int(weight_read + B * kv_per_token * context)
    bound = B * bandwidth.gb_s * 1e9 / step_bytes
    resolved = [B * (N - 1) / (total - first) for first, total in pairs if total > first]
    decode_tok_s = Stat.of(resolved) if resolved else None
    row = BenchRow(
        batch_size=B,
        prompt_tokens=P,
        new_tokens=N,
        generate_s=Stat.of([t for _, t in pairs]),
        ttft_s=Stat.of([f for f, _ in pairs]),
        decode_s=Stat.of([t - f for f, t in pairs]),
        e2e_tok_s=Stat.of([B * N / t for _, t in pairs]),
        prefill_tok_s=Stat.of([B * P / f for f, _ in pairs]),
        decode_tok_s=decode_tok_s,
        weight_read_bytes=weight_read,
        kv_bytes_per_token=kv_per_token,
        bandwidth=bandwidth,
        bytes_per_step=step_bytes,
        bound_tok_s=bound,
        achieved_fraction=decode_tok_s.median / bound if decode_tok_s else None,
        cache_resident=None if bandwidth.llc_bytes is None else step_bytes <= bandwidth.llc_bytes,
        peak_rss_bytes=peak.rss_bytes,
        peak_rss_scope=peak.rss_scope,
        peak_cuda_bytes=peak.cuda_bytes,
        load=timing.load,
        warmup_s=timing.warmup_s,
        **conditions,
    )
    return dataclasses.replace(row, notes=_notes(row, settings))


def log_row(row: BenchRow) -> None:
    decode = f"{row.decode_tok_s.median:.2f}" if row.decode_tok_s else "n/a"
    log.info(
        "%s %s batch %d (%s): %.2f tok/s end-to-end, %s decode",
        row.model,
        row.precision_label,
        row.batch_size,
        row.mode,
        row.e2e_tok_s.median,
        decode,
    )


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's CPU threads set to `threads` (None: left alone) for the block, restored after."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
