"""The performance benchmark (`make bench`, `make bench-gpu`, ``python -m bench``): a user's tool, not a test.

One module per item (lab, pipeline, experiment, gpu: bench/cli.py lists them), what they share in common.py.
"""
