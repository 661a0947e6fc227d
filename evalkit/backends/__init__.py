"""Scoring backends: the one boundary between evalkit and an inference engine (see `base`).

`base.ScoringBackend` is the contract; `hf.Scorer` (the HF prefix engine, batched by `batching`) is one
implementation, `vllm.VllmScorer` (vLLM with automatic prefix caching) the second. Importing this
package imports neither torch nor vLLM.
"""
