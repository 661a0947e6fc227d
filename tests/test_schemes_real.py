"""Slow: SmolLM2 on real questions under the official and lm-eval schemes, checked against the
prompts each upstream source builds (tests/upstream.py), through the saved token counts and hashes."""

from __future__ import annotations

import json

import pytest
from upstream import lm_eval_prompts, official_prompts

from evalkit.types import token_ids_hash

SUBJECTS = {"mmlu": "anatomy", "ceval": "law", "cmmlu": "agronomy"}
LIMIT = 3


@pytest.mark.slow
def test_official_and_lm_eval_score_the_prompts_their_sources_build(smollm_gguf, shared_data, tmp_path):
    from evalkit.models.loading import load_model
    from evalkit.questions.data import load_task_data
    from evalkit.run.task import run_task
    from evalkit.types import RunConfig
    from tasks import get_task

    loaded = load_model(str(smollm_gguf), "fp32", "cpu")
    tokenizer = loaded.tokenizer  # encoded here by hand, not through evalkit.questions.tokens
    builders = {"official": (official_prompts, True), "lm-eval": (lm_eval_prompts, False)}
    hashes: dict[str, dict[str, str]] = {}
    for scheme, (build, special_tokens) in builders.items():
        for task, subject in SUBJECTS.items():
            spec = get_task(task)
            config = RunConfig(
                model=str(smollm_gguf),
                task=task,
                data_dir=str(shared_data),
                subjects=(subject,),
                scheme=scheme,
                limit=LIMIT,
                output_dir=str(tmp_path),
                progress=False,
            )
            run_dir, _ = run_task(
                loaded, spec, load_task_data(spec, shared_data, subjects=[subject], limit=LIMIT), config
            )
            saved = [
                json.loads(line)
                for line in (run_dir.path / "questions.jsonl").read_text(encoding="utf-8").splitlines()
            ]
            expected = build(task, shared_data, subject, spec.eval_split)[:LIMIT]
            assert len(saved) == LIMIT
            for row, text in zip(saved, expected):
                ids = tokenizer(text, add_special_tokens=special_tokens)["input_ids"]
                assert (row["prompt_tokens"], row["prompt_hash"]) == (len(ids), token_ids_hash(ids)), (
                    scheme,
                    row["id"],
                )
                hashes.setdefault(row["id"], {})[scheme] = row["prompt_hash"]
    assert len(hashes) == LIMIT * len(SUBJECTS)
    assert all(by_scheme["official"] != by_scheme["lm-eval"] for by_scheme in hashes.values())
