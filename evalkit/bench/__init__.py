"""Generation throughput (the `bench` subcommand): settings and records (records, torch-free), the timed
run and the HF side (run), `--backend vllm` (vllm), the machine side (machine), the model side (model),
and tables, plot and files (report)."""
