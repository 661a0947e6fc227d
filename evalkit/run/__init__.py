"""The only code that loops over models: the sweep (precisions x tasks), one task's run (task), the token
plan printed before scoring (plan), and the subjects shared out between processes (sharing)."""
