"""The commands other than `run`: validate, plan, history, inspect."""
