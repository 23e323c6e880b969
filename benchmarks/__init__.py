"""Side-by-side benchmarks of distributed_comm, distributed.comm, raw sockets and pyzmq.

Run ``python -m benchmarks`` from the repository root; see ``benchmarks/README.md``.
"""
