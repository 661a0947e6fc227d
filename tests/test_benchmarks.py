"""The benchmarks' own arithmetic, checked against what torch really runs."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from scoring_speed import llama_macs  # noqa: E402


def test_mac_count_equals_the_flops_torch_counts_in_a_llama_forward(tiny_bpe_model_dir):
    """One token, so causal and full attention coincide; eager attention runs as matmuls torch counts.
    Every projection, the MLP, the attention and the vocabulary projection count as torch counts them
    (2 flops per MAC)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_bpe_model_dir, attn_implementation="eager").eval()
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # grouped-query K/V counted
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(torch.tensor([[5]]))
    a, b = llama_macs(model.config, [[5]], [])
    assert 2 * a == 2 * b == counter.get_total_flops()


def test_mac_count_of_a_reused_prefix():
    """Prefix P run once, then each suffix attending to it: by hand for one layer without MLP weight."""
    config = type(
        "Config",
        (),
        dict(
            hidden_size=4,
            intermediate_size=0,
            num_attention_heads=1,
            num_key_value_heads=1,
            num_hidden_layers=1,
            vocab_size=10,
        ),
    )
    seqs = [[1, 2, 3, 4], [1, 2, 3, 5, 6]]
    a, b = llama_macs(config, seqs, [(3, [0, 1])])
    per_token, attention_per_key, head = 4 * 16, 2 * 4, 10 * 4
    whole = lambda n: n * per_token + attention_per_key * n * (n + 1) // 2  # noqa: E731
    assert a == whole(4) + whole(5) + 9 * head
    assert b == whole(3) + (whole(4) - whole(3)) + (whole(5) - whole(3)) + 2 * head
