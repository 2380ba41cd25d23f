"""Test helpers: real servers in subprocesses, real clients, hand-made tokens."""
