"""The performance benchmark (`make bench`, ``python -m bench.run``): a script, not a test."""
