"""Where a model comes from, read before anything loads: a hub id, a local directory or a GGUF file.

Everything here reads metadata only (paths, config.json, a GGUF header): the source's kind, how it
is already quantized on disk, whether evalkit runs it natively, and whether its files can load at
all (a tokenizer present; no repository code the user did not allow). A hub id is tried only when no
such path exists, after one quick reachability check (evalkit.hub).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalkit.hub import require_hub_model
from evalkit.models.quant.choices import Prequantized
from evalkit.types import EvalkitError


@dataclass(frozen=True)
class ModelSource:
    """Where the weights come from: `from_pretrained(location, gguf_file=gguf_file)`."""

    kind: str  # "gguf" | "local" | "hub"
    location: str
    gguf_file: str | None = None

    @property
    def label(self) -> str:
        """A short name for reports and run directories."""
        return Path(self.gguf_file or self.location.rstrip("/")).name.removesuffix(".gguf")


def resolve_source(model: str) -> ModelSource:
    """Classify `--model`: a .gguf file, a local directory, or else a hub id."""
    path = Path(model).expanduser()
    if model.endswith(".gguf"):
        if not path.is_file():
            raise EvalkitError(f"GGUF file not found: {path}")
        return ModelSource("gguf", str(path.parent), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise EvalkitError(
                f"{path} is a directory without config.json; pass a transformers checkpoint "
                f"directory or a .gguf file"
            )
        return ModelSource("local", str(path))
    if model.startswith((".", "/", "~")) or path.exists():
        raise EvalkitError(f"model path not found: {path}")
    return ModelSource("hub", model)


def require_hub(source: ModelSource) -> None:
    """A hub source: one quick reachability check before transformers' retries (evalkit.hub)."""
    if source.kind == "hub":
        require_hub_model(source.location)


def hub_hint(source: ModelSource) -> str:
    """The advice an error about a hub source ends with ("" for a local one)."""
    if source.kind != "hub":
        return ""
    return (
        " (the hub is unreachable from here? download the model and pass its local directory or .gguf file)"
    )


def source_quantization(source: ModelSource) -> Prequantized | None:
    """How the checkpoint is quantized on disk, read from metadata only (GGUF header, config.json)."""
    if source.gguf_file:
        from gguf import GGUFReader, LlamaFileType

        path = Path(source.location) / source.gguf_file
        try:
            reader = GGUFReader(path)
        except (ValueError, OSError) as exc:  # what gguf raises on a truncated or foreign file
            raise EvalkitError(
                f"cannot read the GGUF file {path} ({exc}): it is truncated or not GGUF; "
                "download it again and check its checksum"
            ) from exc
        file_type = reader.fields.get("general.file_type")
        if file_type is None:
            return Prequantized("gguf", "unknown file type")
        code = int(file_type.parts[file_type.data[0]][0])
        return Prequantized("gguf", LlamaFileType(code).name.removeprefix("MOSTLY_"))
    from transformers import PretrainedConfig

    require_hub(source)
    try:
        config, _ = PretrainedConfig.get_config_dict(source.location)
    except OSError as exc:
        raise EvalkitError(
            f"could not read the config of {source.location!r}{hub_hint(source)}: {exc}"
        ) from exc
    quant = config.get("quantization_config")
    if not quant:
        return None
    bits = quant.get("bits") or (8 if quant.get("load_in_8bit") else 4 if quant.get("load_in_4bit") else None)
    group = quant.get("group_size")
    return Prequantized(
        "config",
        str(quant.get("quant_method", "unknown")),
        bits,
        group if isinstance(group, int) and group > 0 else None,
    )


def native_variant(source: ModelSource) -> Any:
    """The BaichuanVariant of a local checkpoint evalkit runs natively (evalkit.models), else None."""
    if source.kind != "local":
        return None
    from evalkit.models.baichuan.checkpoint import detect_variant

    return detect_variant(source.location)


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "merges.txt",
)


def check_model_files(source: ModelSource, trust_remote_code: bool) -> None:
    """Before anything loads: a local checkpoint has a tokenizer, and needs no code of its own that
    the user did not allow (evalkit's native ports excepted: their code is ours)."""
    if source.kind != "local":
        return
    path = Path(source.location)
    names = {p.name for p in path.iterdir()}
    if not names.intersection(TOKENIZER_FILES) and not any(n.endswith(".tiktoken") for n in names):
        raise EvalkitError(
            f"no tokenizer in {path} (none of {', '.join(TOKENIZER_FILES)}): copy the "
            "checkpoint's tokenizer files into it"
        )
    if trust_remote_code or native_variant(source) is not None:
        return
    from transformers import CONFIG_MAPPING

    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EvalkitError(f"cannot read {path / 'config.json'}: {exc}") from exc
    if config.get("auto_map") and config.get("model_type") not in CONFIG_MAPPING:
        raise EvalkitError(
            f"{path} needs its own Python code (model_type {config.get('model_type')!r}, "
            f"config.json auto_map), which transformers does not have and evalkit runs only "
            "with --trust-remote-code: it was not run; pass --trust-remote-code if you trust "
            "that code"
        )
