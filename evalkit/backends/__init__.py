"""Scoring backends: the one place that knows which engines exist (the registry) and what each one needs.

`base.ScoringBackend` is the contract a scorer keeps (token-id prompts and four letter ids in, four fp32
log-probs out). Each backend is one subpackage with a torch-free `plugin.py` that declares a
`BackendPlugin`: its flags, its checks before loading, its loader, its scorer and its generation bench.
The runner, the sweep, the bench and the CLI reach an engine only through `plugin(name)`: nothing outside
this package compares a backend's name. Adding a backend is one subpackage, one line in PLUGINS and its
tests. Importing this package imports neither torch nor vLLM (the plugins' functions import them lazily).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from evalkit.types import EvalkitError, RunConfig, unknown

if TYPE_CHECKING:
    from evalkit.backends.base import ScoringBackend
    from evalkit.bench.schema import BenchReport, BenchSettings
    from evalkit.models.loading import LoadedModel
    from evalkit.models.source import ModelSource

# one precision's loader inside a backend's session: (precision, quantization backend) -> the loaded model
LoadPrecision = Callable[[str, "str | None"], "LoadedModel"]


@dataclass(frozen=True)
class Flag:
    """One command-line flag a backend owns, as data (the CLI builds it: no argparse types here)."""

    dest: str  # the field of the backend's settings record it sets (--max-model-len: max_model_len)
    help: str
    # "int>=N" | "fraction" (in (0, 1]) | "seconds" (> 0) | "switch" | "switch-off" (sets False) | "choice" |
    # "text" | "texts" (repeatable: a tuple)
    kind: str = "int>=1"
    choices: tuple[str, ...] = ()
    metavar: str | None = None
    name: str | None = None  # the flag as typed, where it is not --<dest> (--base-url fills base_urls)


@dataclass(frozen=True)
class FlagGroup:
    """A backend's flags; their values (None: not given) fill the RunConfig field `field`, a record whose
    defaults apply where a flag was not given."""

    title: str
    description: str
    field: str  # the RunConfig field holding the backend's settings record, e.g. "vllm"
    flags: tuple[Flag, ...]

    def dest(self, flag: Flag) -> str:
        """The flag's argparse dest: under the group's field, so no flag of another command clashes with
        it (--served-model-name fills server.model beside --model)."""
        return f"{self.field}.{flag.dest}"


@dataclass(frozen=True)
class BackendPlugin:
    """What one scoring backend declares; every callable imports its engine lazily."""

    name: str  # the --backend value
    summary: str  # its line in --backend's help (scoring)
    bench_summary: str  # its line in bench --backend's help (generation)
    own_flags: tuple[str, ...]  # argparse dests of eval/sweep flags only this backend reads
    own_bench_flags: tuple[str, ...]  # likewise for bench
    flag_group: FlagGroup | None  # its own settings flags (eval, sweep and bench), None: none
    # first of all, before any file is read: refuse settings that cannot run, whatever the model
    check_settings: Callable[[RunConfig, Sequence[str]], None]
    # before anything loads: refuse what cannot run; each precision's quantization backend (None: none)
    check: Callable[[RunConfig, Sequence[str], ModelSource, str, str | None], dict[str, str | None]]
    # the model's session (a GGUF file dequantized once, ...) on `stack`; gives one loader per precision
    open: Callable[[RunConfig, ModelSource, str, str | None, contextlib.ExitStack], LoadPrecision]
    scorer: Callable[[LoadedModel, Sequence[int], RunConfig], ScoringBackend]
    bench: Callable[[dict[str, ModelSource], Sequence[str], BenchSettings, str], BenchReport]
    accelerate_launch: bool  # may run one process per GPU under `accelerate launch`


def no_settings_to_check(config: RunConfig, precisions: Sequence[str]) -> None:
    """`check_settings` of a backend whose settings are all checked against the model (`check`)."""


def _plugins() -> dict[str, BackendPlugin]:
    from evalkit.backends.hf.plugin import HF
    from evalkit.backends.server.plugin import SERVER
    from evalkit.backends.vllm.plugin import VLLM

    return {p.name: p for p in (HF, VLLM, SERVER)}


PLUGINS: dict[str, BackendPlugin] = _plugins()
BACKENDS: tuple[str, ...] = tuple(PLUGINS)  # --backend choices; the first is the default
DEFAULT_BACKEND = BACKENDS[0]


def plugin(name: str) -> BackendPlugin:
    """The backend registered as `name`, or the one "unknown backend" error."""
    if name not in PLUGINS:
        raise unknown("backend", name, BACKENDS)
    return PLUGINS[name]


def refuse_foreign_flags(given: dict[str, Any], backend: str, bench: bool = False) -> None:
    """Flags that only another backend reads are refused before anything loads (they would be silently
    ignored); `given`: argparse dest -> value, None/False where the flag was not given."""
    for other in PLUGINS.values():
        if other.name == backend:
            continue
        shown = {
            name: f"--{name.replace('_', '-')}"
            for name in (other.own_bench_flags if bench else other.own_flags)
        }
        for flag in other.flag_group.flags if other.flag_group else ():
            shown[other.flag_group.dest(flag)] = flag.name or f"--{flag.dest.replace('_', '-')}"
        flags = [typed for name, typed in shown.items() if given.get(name) is not None]
        if flags:
            raise EvalkitError(
                f"{', '.join(flags)} {'is' if len(flags) == 1 else 'are'} for --backend {other.name} only; "
                f"this run is --backend {backend}"
            )


def backend_help(bench: bool = False) -> str:
    """--backend's help: every registered backend's line."""
    lines = [f"{p.name}: {p.bench_summary if bench else p.summary}" for p in PLUGINS.values()]
    return ("generation engine; " if bench else "scoring engine; ") + "; ".join(lines)
