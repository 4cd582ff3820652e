"""Paper protocols and speed benchmarks (installed as ``replay_lcmat.benchmarks``).

Results, with the command that produced each, are committed under ``benchmarks/results/``.
"""
