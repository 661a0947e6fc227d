"""Text to the token ids the scorer reads: the four letter ids (PROTOCOL §2) and prompts encoded under a BOS
policy."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import get_args

from evalkit.questions.prompts import letter_continuation
from evalkit.types import LETTERS, BosPolicy, EvalkitError, LetterRule, Scheme, unknown


@dataclass(frozen=True)
class LetterTokens:
    """The vocabulary ids read for A..D, their token strings, and the rule that chose them."""

    ids: tuple[int, int, int, int]
    strings: tuple[str, str, str, str]  # e.g. ("▁A", ...) or ("ĠA", ...)
    rule: str  # "in_context" | "standalone"


def letter_tokens(tokenizer, rule: LetterRule, scheme: Scheme) -> LetterTokens:
    """The four letter ids (PROTOCOL §2.1, 2.2, 2.4); `rule` is passed apart as a run may override it.

    `in_context`: the one token that a shot's continuation of the answer cue becomes after the cue,
    `encode(cue + continuation)` minus `encode(cue)` (" A" after "Answer:" is "ĠA"; "A" after "答案：").
    `standalone`: `encode(letter)` alone ("▁A" on SentencePiece), whatever the prompt.
    Anything but exactly one token per letter, or a shared id, is an error naming the tokenizer.
    """
    if rule not in get_args(LetterRule):
        raise unknown("letter rule", rule, get_args(LetterRule))
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    cue_text = scheme.answer_cue if rule == "in_context" else ""
    cue = tokenizer.encode(cue_text, add_special_tokens=False) if cue_text else []
    ids = []
    for letter in LETTERS:
        text = cue_text + letter_continuation(scheme, letter) if rule == "in_context" else letter
        full = tokenizer.encode(text, add_special_tokens=False)
        if full[: len(cue)] != cue or len(full) != len(cue) + 1:
            raise EvalkitError(
                f"tokenizer {name}: letter {letter!r} is not exactly one token after "
                f"{cue_text!r} (rule {rule}): {text!r} -> "
                f"{tokenizer.convert_ids_to_tokens(full)}"
            )
        ids.append(full[-1])
    strings = tuple(tokenizer.convert_ids_to_tokens(ids))
    if len(set(ids)) < 4:
        raise EvalkitError(
            f"tokenizer {name}: letters A-D share token ids {ids} {list(strings)} (rule {rule})"
        )
    letters = LetterTokens(ids=tuple(ids), strings=strings, rule=rule)
    for language, overrides in scheme.languages.items():  # AGIEval: "答案是 A" must read the same ids
        variant = letter_tokens(tokenizer, rule, dataclasses.replace(scheme, **overrides, languages={}))
        if variant.ids != letters.ids:
            raise EvalkitError(
                f"tokenizer {name}: the letters after the {language} cue {variant.strings} differ from "
                f"those after {scheme.answer_cue!r} {letters.strings} (rule {rule}); one run reads one set"
            )
    return letters


def _special_tokens(bos: BosPolicy) -> bool:
    if bos not in get_args(BosPolicy):
        raise unknown("BOS policy", bos, get_args(BosPolicy))
    return bos == "tokenizer_default"


def encode_prompts(tokenizer, texts: Sequence[str], bos: BosPolicy) -> list[list[int]]:
    """Token ids of each prompt: the tokenizer's own special tokens, or none at all (`never`)."""
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=_special_tokens(bos))["input_ids"]]


def count_tokens_fn(tokenizer, bos: BosPolicy) -> Callable[[str], int]:
    """A prompt's length exactly as `encode_prompts` makes it (length policies fit prompts with it)."""
    special = _special_tokens(bos)
    return lambda text: len(tokenizer(text, add_special_tokens=special)["input_ids"])
