"""Rows to token ids, no torch: the benchmark files read and checked (data), prompts built from a scheme
(prompts), letter tokens and encoding (tokens), and each subject's prompts fitted and encoded (prepare)."""
