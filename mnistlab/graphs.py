"""A chunk of training steps recorded once as a CUDA graph and replayed with new batch indices.

Only the batch indices change from one chunk to the next; they are copied into static index
tensors that the recorded steps read. Everything else the steps touch (the resident images, the
weights, their gradients, the optimizer's state, the dropout generator) is the same memory at
every replay, which is what a CUDA graph needs. Without ``capture`` the same static buffers are
used and the steps simply run at each replay: the CPU tests check that path against eager steps.
"""

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

StepOutputs = list[tuple[Tensor, Tensor, Tensor]]  # per step: loss, logits, labels


class StepGraph:
    """``run_steps(static_indices)`` recorded once (``capture``) or rerun at each ``replay``."""

    def __init__(
        self,
        run_steps: Callable[[list[Tensor]], StepOutputs],
        sizes: Sequence[int],
        device: torch.device,
        capture: bool,
    ) -> None:
        self.indices = [torch.zeros(size, dtype=torch.int64, device=device) for size in sizes]
        self.run_steps = run_steps
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs: StepOutputs = []
        if capture:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):  # records the kernels; nothing runs until replay()
                self.outputs = run_steps(self.indices)
            self.graph = graph

    def replay(self, batches: Sequence[Tensor]) -> StepOutputs:
        """Run the steps on ``batches`` (index tensors of the recorded sizes); their outputs."""
        for static, batch in zip(self.indices, batches, strict=True):
            static.copy_(batch)
        if self.graph is None:
            self.outputs = self.run_steps(self.indices)
        else:
            self.graph.replay()
        return self.outputs
