"""Models: loading a causal LM at a precision, quantizing it, and native ports of architectures whose hub
code does not run under current transformers.

  loading.py             load_model (tokenizer + network at a precision), check_precision, devices
  source.py              ModelSource: hub id, local directory or GGUF; on-disk quantization, native
                         detection, file checks (metadata only, before anything loads)
  pretrained.py          from_pretrained on a ModelSource: the hub check, and one error for a failed load
  memory.py              weight_bytes (real tensor bytes), measure_peak_memory (RSS and CUDA peak)
  quantize.py            QuantPlan / plan_quantization: which precision/backend runs, and how
  quant_backends.py      bitsandbytes, torchao, a model's own quantize(bits)
  rtn.py                 evalkit's round-to-nearest int8/int4 (RTNLinear)
  baichuan.py            the native Baichuan networks (RoPE and ALiBi) and load_baichuan
  baichuan_checkpoint.py recognising a Baichuan checkpoint (variant) and reading its weights
  baichuan_alibi.py      ALiBi slopes and attention bias
  baichuan_quantize.py   Baichuan's own quantize(bits), re-implemented (QLinear, bitsandbytes)
  baichuan_tokenizer.py  Baichuan's SentencePiece tokenizer, without its remote code
  cache_names.py         the installed transformers' name for the KV cache (`cache` / `past_key_values`)

The native classes take what transformers' own models take (Cache objects, 4D additive masks,
position_ids, logits_to_keep), so the Scorer may pack rows for them.
"""
