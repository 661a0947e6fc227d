"""The installed transformers' name for the KV cache: 5.24 renamed `past_key_values` to `cache`.

Read from the installed classes, not from a version number, so a native port's forwards take the
name the installed Llama classes pass, and either name from a caller (5.24's own deprecation shim,
or `renamed_kwarg` before it). Works on transformers 5.17 to 5.24+.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from transformers import LlamaModel
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.models.llama.modeling_llama import LlamaDecoderLayer
from transformers.utils.deprecation import deprecate_kwarg


def _cache_name(function: Callable) -> str:
    """`cache` where a forward of the installed transformers takes it, else `past_key_values`
    (inspect.signature sees through the deprecation decorator to the real parameters)."""
    return "cache" if "cache" in inspect.signature(function).parameters else "past_key_values"


CACHE_ARGUMENT = _cache_name(LlamaModel.forward)  # what LlamaForCausalLM passes to LlamaModel
LAYER_CACHE = _cache_name(LlamaDecoderLayer.forward)  # what a decoder layer takes and hands self_attn
OUTPUT_CACHE = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def renamed_kwarg(old: str, new: str) -> Callable[[Callable], Callable]:
    """A forward that also takes `old=` for its `new=` argument, silently (signature unchanged).

    Both given: the one that is not None; both not None is an error.
    """

    def decorate(forward: Callable) -> Callable:
        @functools.wraps(forward)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if old in kwargs:
                value = kwargs.pop(old)
                if value is not None and kwargs.get(new) is not None:
                    raise TypeError(f"{forward.__qualname__}: pass one of `{new}` and `{old}`, not both")
                if value is not None or new not in kwargs:
                    kwargs[new] = value
            return forward(*args, **kwargs)

        return wrapped

    return decorate


def the_cache(cache: Any, past_key_values: Any) -> Any:
    """The one KV cache an attention was given, under either name."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise TypeError("an attention was given two KV caches (`cache` and `past_key_values`)")
    return cache if cache is not None else past_key_values


# model_cache_keyword: the decorator of a model forward taking `cache=`, so it takes `past_key_values=` too
if CACHE_ARGUMENT == "cache":  # transformers >= 5.24: its own shim (a FutureWarning from 5.40)
    model_cache_keyword = deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
else:  # older: LlamaForCausalLM hands past_key_values= to the model
    model_cache_keyword = renamed_kwarg("past_key_values", "cache")
