"""Benchmarks and measuring tools, kept out of the library packages.

Each module is a command (`python -m benchmarks.<name>`, or the `make` target named in its
docstring) that measures something the documentation reports; docs/performance.md gives every
figure with the command that produced it. Nothing in extract/, features/ or classify/ imports
from here.
"""
