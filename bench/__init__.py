"""The performance benchmark (`make bench`, `make bench-gpu`, ``python -m bench``): a script, not a test.

One module per measured item (lab, overhead, startup, pipeline, step_profile; gpu and stage_times
for the GPU table), what they share in common.py, the command line in cli.py.
"""
