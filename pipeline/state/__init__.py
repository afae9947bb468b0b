"""What a job remembers between runs: the state store, resume journals, metrics."""
