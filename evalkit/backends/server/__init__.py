"""`--backend server`: score a model served by vLLM OpenAI-compatible servers (vLLM >= 0.32) over HTTP.

- settings: ServerSettings (RunConfig.server, not hashed), check_settings (before anything loads);
- loader: load_for_run -> LoadedModel whose `model` is a ServedModel (tokenizer from --model, every
  server checked: model listed, max_model_len, /tokenize agrees, the four letter log-probs come back);
- scorer: ServerScorer (score_batches, score_subjects yielding SubjectScore with the full-vocabulary
  letter log-probs, describe);
- client (one server's requests and retries), dispatch (threads per server, one consumer, handoffs),
  routing (subject-affine, longest first), metrics (prefix-cache counters from /metrics).

Importing this package imports neither torch nor vLLM, nor any HTTP package: the client is the stdlib.
"""
