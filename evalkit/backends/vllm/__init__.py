"""The in-process vLLM backend: the engine's settings and start (engine), the scorer (scorer), and the
model loaded for `eval`/`sweep --backend vllm` (loader)."""
