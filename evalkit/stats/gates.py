"""The gates of `compare`: thresholds on each benchmark's Average that judge a quantized (or any) model
against its baseline. `max_drop` (accuracy points it may lose), `max_kl` (nats of mean KL(P_A || P_B) it
may reach), `min_agreement` (the share of top letters it must keep), `max_ece_increase` (ECE points it
may gain). A value equal to a threshold passes; the tolerance absorbs float noise, and a NaN or infinite
figure fails. Thresholds are checked before any run is read (check_thresholds)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from evalkit.types import EvalkitError

if TYPE_CHECKING:
    from evalkit.stats.compare import BenchmarkComparison


@dataclass(frozen=True)
class Gate:
    """One threshold on each benchmark's Average, and the benchmarks that failed it."""

    name: str  # "max drop", "max KL", "min agreement", "max ECE increase"
    threshold: float
    unit: str  # how the threshold is given: "points", "nats", "fraction"
    failed: dict[str, float]  # benchmark -> its failing value, in the threshold's unit


@dataclass(frozen=True)
class Thresholds:
    """The gates asked for (None: that gate is off)."""

    max_drop: float | None = None  # accuracy points
    max_kl: float | None = None  # nats
    min_agreement: float | None = None  # fraction in [0, 1]
    max_ece_increase: float | None = None  # ECE points


def check_thresholds(
    max_drop: float | None = None,
    max_kl: float | None = None,
    min_agreement: float | None = None,
    max_ece_increase: float | None = None,
) -> None:
    """Refuse a gate that cannot judge: NaN or infinite (NaN compares false and would pass anything),
    negative, or an agreement outside [0, 1]."""
    flags = (
        ("--max-drop", max_drop),
        ("--max-kl", max_kl),
        ("--min-agreement", min_agreement),
        ("--max-ece-increase", max_ece_increase),
    )
    for flag, value in flags:
        if value is not None and not math.isfinite(value):
            raise EvalkitError(f"{flag} must be a finite number, got {value}")
    if max_drop is not None and max_drop < 0:
        raise EvalkitError(f"max drop must be >= 0 accuracy points, got {max_drop}")
    if max_kl is not None and max_kl < 0:
        raise EvalkitError(f"--max-kl must be >= 0 nats, got {max_kl}")
    if min_agreement is not None and not 0 <= min_agreement <= 1:
        raise EvalkitError(f"--min-agreement is a fraction in [0, 1], got {min_agreement}")
    if max_ece_increase is not None and max_ece_increase < 0:
        raise EvalkitError(f"--max-ece-increase must be >= 0 ECE points, got {max_ece_increase}")


# (gate name, unit, the benchmark's figure in the threshold's unit, whether it passes the threshold)
_RULES: dict[str, tuple[str, str, Callable[[BenchmarkComparison], float], Callable[[float, float], bool]]] = {
    "max_drop": ("max drop", "points", lambda c: -100 * c.overall.delta, lambda v, t: v <= t + 1e-9),
    "max_kl": (
        "max KL",
        "nats",
        lambda c: c.overall.divergence.kl_mean.value,
        lambda v, t: v <= t + 1e-12,  # a NaN or inf KL fails
    ),
    "min_agreement": (
        "min agreement",
        "fraction",
        lambda c: c.overall.divergence.agreement.value,
        lambda v, t: v >= t - 1e-12,
    ),
    "max_ece_increase": (
        "max ECE increase",
        "points",
        lambda c: 100 * c.overall.calibration.ece_delta,
        lambda v, t: v <= t + 1e-9,
    ),
}


def judge(benchmarks: Mapping[str, BenchmarkComparison], thresholds: Thresholds) -> tuple[Gate, ...]:
    """Each gate asked for, with the benchmarks whose Average fails it."""
    gates = []
    for field, (name, unit, figure, passes) in _RULES.items():
        threshold = getattr(thresholds, field)
        if threshold is not None:
            values = {bench: figure(c) for bench, c in benchmarks.items()}
            gates.append(
                Gate(name, threshold, unit, {b: v for b, v in values.items() if not passes(v, threshold)})
            )
    return tuple(gates)
