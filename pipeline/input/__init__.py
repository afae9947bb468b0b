"""Reading the inputs: discover files, plan chunks at record boundaries, read them into Arrow."""
