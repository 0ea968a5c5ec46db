"""Benchmarks of pyro-adv against what a Pyro user would pick instead (``python -m benchmarks``)."""
