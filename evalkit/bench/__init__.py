"""Generation throughput (the `bench` subcommand): settings, records and the timed run (run), the machine
side (machine), the model side (model), and tables, plot and files (report)."""
