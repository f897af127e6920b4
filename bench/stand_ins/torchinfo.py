"""A stand-in for torchinfo where it is not installed, put on the stages' PYTHONPATH by bench/stage_times.py.

The machine ``make bench-gpu`` is for may lack torchinfo; the training stages print and save its
summary before they fit (milliseconds). This gives them the network's repr instead, so that their
times can still be taken. Nothing else uses it.
"""

from torch import nn


def summary(model: nn.Module, **options: object) -> str:
    """The network's repr, where torchinfo would give its table."""
    return f"(torchinfo not installed: the bench's stand-in)\n{model!r}"
