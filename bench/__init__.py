"""Load generator and benchmarks for Callwire (see bench/README.md).

Run from the repository root with the project's venv, e.g.
``.venv/bin/python -m bench.run --connections 10000``.
"""
