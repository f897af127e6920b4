"""torchinfo's ``summary`` where torchinfo is not installed (`make bench-gpu`'s machine may lack it): the training
stages print and save a summary before they fit; this gives them the network's repr, so that they still run.
"""

from torch import nn


def summary(model: nn.Module, **options: object) -> str:
    """The network's repr, where torchinfo would give its table."""
    return f"(torchinfo not installed: the bench's stand-in)\n{model!r}"
