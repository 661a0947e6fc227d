"""Presenting saved results, torch-free: the README-style tables (tables) and their CSV (csv), the precision
table (quantization), the HTML page (html), a paired comparison (compare) and the `list` output (listing)."""
