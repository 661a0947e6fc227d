"""The transformers backend: the prefix-reuse scorer (scorer), its batching (batching), what it reads from
a model's forward (forward), and the probe that checks reuse against lone forwards (probe)."""
