"""The `bench` entry: models resolved and labelled and the device resolved once, then the backend's own
bench (evalkit.backends registry) times every model × precision × batch size."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from evalkit.bench.schema import BenchReport, BenchSettings
from evalkit.types import EvalkitError

if TYPE_CHECKING:
    from evalkit.models.source import ModelSource


def labelled_sources(models: Sequence[str]) -> dict[str, ModelSource]:
    """Each model resolved once (a wrong path fails now, not after the first model's timings), keyed by
    its row label (the model as typed where short labels would not tell rows apart)."""
    from evalkit.models.source import resolve_source

    sources = {model: resolve_source(model) for model in models}
    if len(sources) < len(models):
        raise EvalkitError(f"a model is listed twice in {list(models)}")
    if len({source.label for source in sources.values()}) < len(models):  # labels must tell rows apart
        return sources
    return {source.label: source for source in sources.values()}


def run_bench(
    models: Sequence[str], precisions: Sequence[str], settings: BenchSettings | None = None
) -> BenchReport:
    """Benchmark every model × precision × batch size on one device in one mode (modes never mix), on
    the backend `settings.backend` names."""
    from evalkit.backends import plugin
    from evalkit.machine import resolve_device
    from evalkit.store.interrupt import measuring

    settings = settings or BenchSettings()
    if not models or not precisions:
        raise EvalkitError(
            f"bench needs at least one model and one precision, got {list(models)} and {list(precisions)}"
        )
    backend = plugin(settings.backend)
    sources = labelled_sources(models)
    with measuring(None, len(sources) * len(precisions)):  # a Ctrl-C: one line, nothing written
        return backend.bench(sources, precisions, settings, resolve_device(settings.device))
