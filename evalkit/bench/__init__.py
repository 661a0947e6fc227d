"""Generation throughput (the `bench` subcommand): settings and records (schema, torch-free), the timed
run and the HF side (hf_bench), `--backend vllm` (vllm_bench), timers and the bandwidth probe (timing), the
model side (generation), and tables, plot and files (report)."""
