"""Interop tests: our transport inside real dask/distributed processes, and our
default comm talking to stock ones."""
