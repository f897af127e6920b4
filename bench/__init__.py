"""The performance benchmark (`make bench`, `make bench-gpu`, ``python -m bench``): a script, not a test.

One module per measured item (lab, overhead, startup, pipeline, step_profile, strict_mode, kernels;
gpu and stage_times for the GPU table), what they share in common.py, the command line in cli.py.
The CPU-dependence study `python -m bench.isa` beside it: isa (driver), isa_settings, isa_ops, isa_report.
"""
