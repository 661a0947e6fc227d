"""Quantization: which precision/backend combinations run and what they record (plans), the library
backends bitsandbytes and torchao and a model's own quantize() (libraries), round-to-nearest (rtn)."""
