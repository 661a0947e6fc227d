"""Models: loading a causal LM at a precision, quantizing it, and native ports of architectures whose hub
code does not run under current transformers.

  loading.py       load_model (tokenizer + network at a precision), check_precision, devices
  source.py        ModelSource: hub id, local directory or GGUF; on-disk quantization, native
                   detection, file checks (metadata only, before anything loads)
  pretrained.py    from_pretrained on a ModelSource: the hub check, and one error for a failed load
  memory.py        weight_bytes (real tensor bytes), measure_peak_memory (RSS and CUDA peak)
  cache_names.py   the installed transformers' name for the KV cache (`cache` / `past_key_values`)
  quant/           plans (which precision/backend runs, and how), libraries (bitsandbytes, torchao, a
                   model's own quantize), rtn (evalkit's round-to-nearest int8/int4)
  baichuan/        the native Baichuan networks (model), checkpoint recognition and weights (checkpoint),
                   ALiBi (alibi), Baichuan's quantize() (quantize), its SentencePiece tokenizer (tokenizer)

The native classes take what transformers' own models take (Cache objects, 4D additive masks,
position_ids, logits_to_keep), so the Scorer may pack rows for them.
"""
