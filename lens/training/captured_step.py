"""The training step replayed as CUDA graphs: batch synthesis, forward, loss, backward and
the optimiser step in one launch.

Why: a step is ~12-17 k small kernels (the output camera's Newton iterations in the pair
synthesis and in the loss, and their backward). On the lent H200 each launch is expensive
enough that a training process made 1.9 steps/s at batch 128 with the GPU nearly idle; the
same cure took `lens run`'s inference from 436 to 32 ms per batch (`lens.runtime.cuda_graphs`).

How: the host makes every random draw (`plan_batch`), copies it into static device tensors
and replays the graph captured for that batch shape (three aspect ratios, so three graphs,
each with its own memory pool: they replay in any order, which a shared pool does not allow).
Gradients, optimiser state and BatchNorm statistics are created by the warm-up steps, outside
any graph, and shared by all of them (``zero_grad(set_to_none=False)`` keeps the tensors).
The optimiser must be capturable with a tensor learning rate (`make_optimizer`). Before each
shape's capture, ``warmup`` ordinary steps run on a side stream (PyTorch's recipe for lazy
initialisation); they train on that first batch too.

Status: written against PyTorch's documented whole-network capture API; the pieces it replays
(`synthesize`, `step_loss`) are tested on the CPU, the capture itself needs a CUDA GPU and has
not yet run on one (opt-in: `lens train --cuda-graphs`).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from lens.training.batches import Batch, BatchPlan, synthesize


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, captured: bool) -> torch.optim.Optimizer:
    """AdamW; for a captured step its state and learning rate live on the GPU."""
    if not captured:
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    device = next(model.parameters()).device
    return torch.optim.AdamW(model.parameters(), lr=torch.tensor(lr, device=device), weight_decay=weight_decay, capturable=True)


class CapturedTrainStep:
    def __init__(self, model: torch.nn.Module, optim: torch.optim.Optimizer, pool: torch.Tensor,
                 step_loss: Callable[[Batch], torch.Tensor], clip: float = 5.0, warmup: int = 2):
        if pool.device.type != "cuda":
            raise ValueError("a captured training step needs the source pool on a CUDA device")
        self.model, self.optim, self.pool = model, optim, pool
        self.step_loss, self.clip, self.warmup = step_loss, clip, warmup
        self.graphs: dict[tuple, tuple] = {}

    def _body(self, plan: BatchPlan) -> torch.Tensor:
        loss = self.step_loss(synthesize(self.pool, plan))
        self.optim.zero_grad(set_to_none=False)  # gradients stay the same tensors between replays
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optim.step()
        return loss.detach()

    def _capture(self, plan: BatchPlan) -> tuple:
        dev = self.pool.device
        static = BatchPlan(plan.portrait, plan.height, plan.width, plan.indices.to(dev), plan.flips.to(dev), plan.params.to(dev))
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self._body(static)
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loss = self._body(static)
        return graph, static, loss

    def __call__(self, plan: BatchPlan) -> torch.Tensor:
        """One training step on ``plan``; returns the loss (a static tensor: read it before
        the next call)."""
        key = (plan.portrait, plan.height, plan.width, len(plan.indices))
        if key not in self.graphs:
            self.graphs[key] = self._capture(plan)  # records the step; does not run it
        graph, static, loss = self.graphs[key]
        static.indices.copy_(plan.indices, non_blocking=True)
        static.flips.copy_(plan.flips, non_blocking=True)
        static.params.copy_(plan.params, non_blocking=True)
        graph.replay()
        return loss
