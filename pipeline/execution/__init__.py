"""Running the chunks: the worker function, the local Pool executor, the Dask executor."""
