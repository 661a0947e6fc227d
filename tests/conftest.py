"""Shared fixtures: tiny *real* models and tokenizers built on the fly, and the ../shared paths.

The tiny models are random-init LlamaForCausalLM checkpoints saved to a temporary directory, so
tests load them through evalkit's own loading path. One uses a SentencePiece tokenizer trained
in the test (letters score as "▁A" standalone), the other a byte-level BPE tokenizer ("ĠA").
"""

from __future__ import annotations

import random
import shutil
import signal
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_DATA = SHARED / "data"
SMOLLM_GGUF = SHARED / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

_WORDS_EN = (
    "the following are multiple choice questions with answers about abstract algebra anatomy "
    "physics law history which of these is true false answer question model value number"
).split()
_WORDS_ZH = list(
    "以下是中国关于考试的单项选择题请选出其中正确答案题目会计税法原则物理历史数学直接给出选项农学"
)


@pytest.fixture(autouse=True, scope="session")
def ctrl_c_reaches_the_tests() -> None:
    """A shell that starts pytest in the background (`cmd &`, no job control) leaves SIGINT ignored, and
    Python then installs no KeyboardInterrupt handler, in this process and in the `eval` processes it
    starts: the Ctrl-C tests (test_interrupt, test_faults) would see their real SIGINTs vanish. Python's
    own handler is taken back (a handled signal is reset to its default in a child at exec)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _corpus(seed: int = 0, lines: int = 3000) -> list[str]:
    """Prompt-shaped text so that the letters after each answer cue become single tokens."""
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        en = " ".join(rng.choice(_WORDS_EN) for _ in range(rng.randint(3, 12)))
        zh = "".join(rng.choice(_WORDS_ZH) for _ in range(rng.randint(3, 12)))
        letter = rng.choice("ABCD")
        out.append(f"{en}?\nA. {en[:9]}\nB. {en[-7:]}\nC. {zh[:3]}\nD. {zh[-3:]}\nAnswer: {letter}")
        out.append(f"题目：{zh}\nA. {zh[:2]}\nB. {zh[1:4]}\nC. 3\nD. 4\n答案：{letter}\n答案是：{letter}")
        out.append(f"{letter} {letter}. {letter}")
    return out


def _tiny_llama(vocab_size: int, bos_id: int | None, eos_id: int | None, pad_id: int | None, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    # random init is near-uniform; scale up so log-probs over letters differ and ties are rare
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_spm_model_dir(tmp_path_factory) -> Path:
    """A tiny llama with a SentencePiece (BPE, byte fallback) tokenizer trained here; adds BOS."""
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    out = tmp_path_factory.mktemp("tiny_spm")
    corpus = out / "corpus.txt"
    corpus.write_text("\n".join(_corpus()), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(out / "spm"),
        vocab_size=400,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        bos_id=1,
        eos_id=2,
        unk_id=0,
        pad_id=3,
        minloglevel=2,
        normalization_rule_name="identity",
    )  # keep "：" byte-exact, as LLaMA does
    model_dir = out / "model"
    model_dir.mkdir()
    shutil.copy(out / "spm.model", model_dir / "tokenizer.model")
    tokenizer = LlamaTokenizer.from_pretrained(model_dir, legacy=False, add_bos_token=True, pad_token="<pad>")
    tokenizer.save_pretrained(model_dir)
    _tiny_llama(
        len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, 1
    ).save_pretrained(model_dir)
    return model_dir


@pytest.fixture(scope="session")
def tiny_bpe_model_dir(tmp_path_factory) -> Path:
    """A tiny llama with a byte-level BPE tokenizer (GPT-2 style "ĠA"); no BOS, no pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny_bpe")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_corpus(seed=1), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")
    model_dir = out / "model"
    tokenizer.save_pretrained(model_dir)
    _tiny_llama(len(tokenizer), None, tokenizer.eos_token_id, None, 2).save_pretrained(model_dir)
    return model_dir


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from threads; on a busy machine extra threads only spin."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def smollm_gguf() -> Path:
    if not SMOLLM_GGUF.exists():
        pytest.skip(f"real model absent: {SMOLLM_GGUF} (../shared is not beside this checkout)")
    return SMOLLM_GGUF


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real benchmark data absent: {SHARED_DATA} (../shared is not beside this checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    """A --data-dir with all three benchmarks in their official layouts (tests/datafiles.py), only
    for the subjects in datafiles.TINY_SUBJECTS (pass them as `subjects=`: the others have no
    files); 5 dev rows and 6 rows in every other split."""
    from datafiles import TINY_SUBJECTS, write_data_dir

    root = tmp_path_factory.mktemp("tiny_data")
    for task, subjects in TINY_SUBJECTS.items():
        write_data_dir(root, task, {name: 6 for name in subjects})
    return root
