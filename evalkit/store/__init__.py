"""What a run leaves on disk: the records of run.json (records), the run directory being scored (run_dir),
questions.jsonl (questions_file), finished runs read back (saved_runs), and atomic writes (disk)."""
