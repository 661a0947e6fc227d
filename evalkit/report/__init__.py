"""Presenting saved results, torch-free: the README-style tables (tables; as markdown: tables_markdown) and
their CSV (csv), the precision table (quantization; as markdown: quantization_markdown), the HTML page (html),
a paired comparison (compare_tables) and the `list` output (listing); text shared by them in text."""
