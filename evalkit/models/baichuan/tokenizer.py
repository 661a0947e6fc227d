"""Baichuan's SentencePiece tokenizer, without its repository code.

The hub's `BaichuanTokenizer` / `BaiChuanTokenizer` (Baichuan-7B, -13B, Baichuan2) is a slow
tokenizer over `tokenizer.model`: each piece of `sp.encode(text, out_type=str)` mapped by
`piece_to_id`, BOS/EOS added per `add_bos_token` / `add_eos_token` from `tokenizer_config.json`.
Under transformers 5 the original raises (it sets `sp_model` after `super().__init__()`, which
already asks for the vocabulary); this class gives the same ids through the ordinary HF API.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import sentencepiece as spm
from transformers import AddedToken, PreTrainedTokenizer

__all__ = ["BaichuanSpmTokenizer", "load_baichuan_tokenizer"]

SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")


class BaichuanSpmTokenizer(PreTrainedTokenizer):
    """ids = [BOS]? + piece ids of sentencepiece's encoding + [EOS]?, as the original tokenizer."""

    vocab_files_names = {"vocab_file": "tokenizer.model"}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        vocab_file: str,
        unk_token: Any = "<unk>",
        bos_token: Any = "<s>",
        eos_token: Any = "</s>",
        pad_token: Any = None,
        add_bos_token: bool = False,
        add_eos_token: bool = False,
        clean_up_tokenization_spaces: bool = False,
        **kwargs: Any,
    ) -> None:
        # the processor first: PreTrainedTokenizer.__init__ already reads the vocabulary
        self.vocab_file = str(vocab_file)
        self.sp_model = spm.SentencePieceProcessor()
        self.sp_model.Load(self.vocab_file)
        self.add_bos_token, self.add_eos_token = add_bos_token, add_eos_token
        super().__init__(
            bos_token=bos_token,
            eos_token=eos_token,
            unk_token=unk_token,
            pad_token=pad_token,
            add_bos_token=add_bos_token,
            add_eos_token=add_eos_token,
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
            **kwargs,
        )
        self.add_bos_token, self.add_eos_token = add_bos_token, add_eos_token

    @property
    def vocab_size(self) -> int:
        return self.sp_model.get_piece_size()

    def get_vocab(self) -> dict[str, int]:
        vocab = {self.sp_model.id_to_piece(i): i for i in range(self.vocab_size)}
        vocab.update(self.added_tokens_encoder)
        return vocab

    def _tokenize(self, text: str, **kwargs: Any) -> list[str]:
        return self.sp_model.encode(text, out_type=str)

    def _convert_token_to_id(self, token: str) -> int:
        return self.sp_model.piece_to_id(token)

    def _convert_id_to_token(self, index: int) -> str:
        return self.sp_model.id_to_piece(index)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Runs of ordinary pieces decoded by sentencepiece; special tokens kept as their text."""
        special = set(self.all_special_tokens)
        out, run, prev_special = "", [], False
        for i, token in enumerate(tokens):
            if token in special:
                if not prev_special and i != 0:
                    out += " "
                out += self.sp_model.decode(run) + token
                run, prev_special = [], True
            else:
                run.append(token)
                prev_special = False
        return out + self.sp_model.decode(run)

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        bos = [self.bos_token_id] if self.add_bos_token else []
        eos = [self.eos_token_id] if self.add_eos_token else []
        out = bos + token_ids_0 + eos
        if token_ids_1 is not None:
            out = out + bos + token_ids_1 + eos
        return out

    def get_special_tokens_mask(
        self,
        token_ids_0: list[int],
        token_ids_1: list[int] | None = None,
        already_has_special_tokens: bool = False,
    ) -> list[int]:
        if already_has_special_tokens:
            return super().get_special_tokens_mask(token_ids_0, token_ids_1, already_has_special_tokens=True)
        bos = [1] if self.add_bos_token else []
        eos = [1] if self.add_eos_token else []
        mask = bos + [0] * len(token_ids_0) + eos
        if token_ids_1 is not None:
            mask += bos + [0] * len(token_ids_1) + eos
        return mask

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        out = Path(save_directory) / f"{filename_prefix + '-' if filename_prefix else ''}tokenizer.model"
        out.write_bytes(self.sp_model.serialized_model_proto())
        return (str(out),)


def _special(value: Any) -> Any:
    """A tokenizer_config.json special token: a string, or a serialized AddedToken dict."""
    if isinstance(value, dict):
        fields = ("lstrip", "rstrip", "single_word", "normalized")
        return AddedToken(value["content"], **{k: value[k] for k in fields if k in value})
    return value


def load_baichuan_tokenizer(directory: str | Path) -> BaichuanSpmTokenizer:
    """The tokenizer of a Baichuan checkpoint directory, configured from its tokenizer_config.json."""
    directory = Path(directory)
    config_file = directory / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    kwargs: dict[str, Any] = {name: _special(config[name]) for name in SPECIAL_NAMES if name in config}
    kwargs["add_bos_token"] = bool(config.get("add_bos_token", False))
    kwargs["add_eos_token"] = bool(config.get("add_eos_token", False))
    kwargs["clean_up_tokenization_spaces"] = bool(config.get("clean_up_tokenization_spaces", False))
    if isinstance(config.get("model_max_length"), int):
        kwargs["model_max_length"] = config["model_max_length"]
    tokenizer = BaichuanSpmTokenizer(str(directory / "tokenizer.model"), **kwargs)
    tokenizer.name_or_path = str(directory)
    return tokenizer
