"""Presenting saved results, torch-free: the README-style tables (tables; as markdown: tables_markdown) and
their CSV (csv), the precision table (quantization; as markdown: quantization_markdown), the HTML page (html),
a paired comparison (compare_tables) and the `list` output (listing); text shared by them in text."""

# report --precision-table: when the quantization table is shown (None: where a model has runs at several
# precisions). Here, torch- and pandas-free, so that the CLI declares the flag without importing the tables.
PRECISION_TABLE: dict[str, bool | None] = {"auto": None, "always": True, "never": False}
PRECISION_TABLE_DEFAULT = "auto"
