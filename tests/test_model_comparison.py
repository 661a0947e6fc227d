"""The README's side-by-side comparison, Baichuan-13B against LLaMA-13B, end to end on tiny checkpoints.

Baichuan-13B is the tiny random-weight fixture in its original hub layout (../shared, remote code beside
it, never run); LLaMA-13B is a tiny llama written here in the original Hugging Face layout: sharded
`pytorch_model-*.bin` with its index and a SentencePiece `tokenizer.model` that adds BOS (no
tokenizer.json). Both are scored under the `baichuan` and `official` schemes and land in one report.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from run_eval import main

SHARED = Path(__file__).resolve().parents[2] / "shared"
BAICHUAN_13B = SHARED / "models" / "baichuan" / "baichuan-13b-tiny"
SUBJECTS = "ceval/accountant,mmlu/abstract_algebra,cmmlu/agronomy"


@pytest.fixture(scope="module")
def baichuan_13b() -> Path:
    if not (BAICHUAN_13B / "config.json").is_file():
        pytest.skip(
            f"tiny Baichuan-13B fixture absent: {BAICHUAN_13B} (../shared is not beside this checkout)"
        )
    return BAICHUAN_13B


@pytest.fixture(scope="module")
def llama_hf_layout(tiny_spm_model_dir: Path, tmp_path_factory) -> Path:
    """The conftest SentencePiece llama re-saved as the original LLaMA conversions were laid out."""
    import torch
    from transformers import LlamaForCausalLM

    out = tmp_path_factory.mktemp("llama") / "LLaMA-13B"
    model = LlamaForCausalLM.from_pretrained(tiny_spm_model_dir)
    model.config.save_pretrained(out)
    # transformers 5 writes only safetensors: the two pickled shards and their index are written here
    state = model.state_dict()
    names = sorted(state)
    shards = {"pytorch_model-00001-of-00002.bin": names[::2], "pytorch_model-00002-of-00002.bin": names[1::2]}
    for shard, keys in shards.items():
        torch.save({key: state[key].clone() for key in keys}, out / shard)
    weight_map = {key: shard for shard, keys in shards.items() for key in keys}
    (out / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    shutil.copy(tiny_spm_model_dir / "tokenizer.model", out / "tokenizer.model")
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "add_bos_token": True,
                "add_eos_token": False,
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "pad_token": "<pad>",
                "legacy": False,
            }
        )
    )
    assert (out / "pytorch_model.bin.index.json").is_file() and not (out / "tokenizer.json").exists()
    return out


def test_baichuan_13b_beside_llama_13b_in_one_report(
    baichuan_13b: Path, llama_hf_layout: Path, tiny_data_dir: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "results"
    for model in (baichuan_13b, llama_hf_layout):
        for scheme in ("baichuan", "official"):
            assert (
                main(
                    [
                        "eval",
                        "--model",
                        str(model),
                        "--data-dir",
                        str(tiny_data_dir),
                        "--subjects",
                        SUBJECTS,
                        "--scheme",
                        scheme,
                        "--output-dir",
                        str(out),
                        "--no-progress",
                        "--threads",
                        "1",
                    ]
                )
                == 0
            )
    runs = [json.loads(path.read_text(encoding="utf-8")) for path in sorted(out.glob("*/run.json"))]
    assert len(runs) == 2 * 2 * 3  # models x schemes x benchmarks
    by_model = {}
    for run in runs:
        by_model.setdefault(Path(run["config"]["model"]).name, []).append(run)
    assert set(by_model) == {"baichuan-13b-tiny", "LLaMA-13B"}
    for run in by_model["baichuan-13b-tiny"]:  # natively, no remote code, with the fast engine
        assert run["model_info"]["implementation"].startswith("evalkit.models.baichuan:")
        assert (
            run["model_info"]["remote_code_executed"] is False and run["config"]["trust_remote_code"] is False
        )
        assert run["bos"] is False  # Baichuan's tokenizer adds no BOS
        if run["engine"] == "prefix":  # shots shared by all questions (not C-Eval's per-question shuffle)
            assert run["reuse_mode"] == "packed" and not run["fallbacks"]
    for run in by_model["LLaMA-13B"]:
        # LLaMA's tokenizer adds BOS wherever the scheme keeps the tokenizer's default (Baichuan's
        # C-Eval and MMLU scripts never add one)
        assert run["bos"] is (run["scheme"]["bos"] == "tokenizer_default")
    capsys.readouterr()
    assert main(["report", str(out), "--no-published"]) == 0
    printed = capsys.readouterr().out
    for title in ("## C-Eval", "## MMLU", "## CMMLU"):
        section = printed.split(title, 1)[1].split("\n## ", 1)[0]
        assert "baichuan-13b-tiny" in section and "LLaMA-13B" in section, section
    assert "baichuan" in printed and "official" in printed
