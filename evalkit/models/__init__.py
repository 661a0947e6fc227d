"""Native implementations of architectures whose hub code does not run under current transformers.

Their classes live under `evalkit.models.` and take what transformers' own models take (Cache
objects, 4D additive masks, position_ids, logits_to_keep), so the Scorer may pack rows for them.
"""
