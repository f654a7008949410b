"""Replay the exported graph as CUDA graphs: one launch per batch instead of thousands.

`LensGraph` is thousands of small kernels (the output camera's Newton iterations, three modes'
safety statistics on a lattice). Eager, each costs a launch: measured on an H200, 436 ms per
batch of 16 at 2048 x 1367, so the GPU sat idle while the CPU launched. A CUDA graph records
those launches once per input shape and replays them with one call. The graph has no
data-dependent control flow and no host syncs (it is also exported to ONNX), so it captures
as is. Shapes are few in practice (a camera's photos share a size), so a small LRU cache of
captured graphs suffices; each holds its own memory pool for its static tensors.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable


class CapturedGraphs:
    """``fn(image, mode)`` -> tuple of tensors, replayed per ``(B, H, W)`` shape. Outputs are
    the graph's static tensors: valid until the next call with the same shape."""

    def __init__(self, fn: Callable, max_shapes: int = 3):
        import torch

        self.torch = torch
        self.fn = fn
        self.max_shapes = max_shapes
        self.cache: OrderedDict[tuple, tuple] = OrderedDict()
        # Held while capturing: keeps other GPU users (the JPEG codec's threads) quiet.
        self.capture_guard: Callable = contextlib.nullcontext
        self.failed: str | None = None  # why capture failed; then every call runs eagerly

    def _capture(self, image, mode) -> tuple:
        torch = self.torch
        static_image = torch.empty(image.shape, dtype=image.dtype, device=image.device)
        static_image.copy_(image)
        static_mode = mode.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():  # warm-up: lazy inits must not be captured
            for _ in range(2):
                self.fn(static_image, static_mode)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads may allocate while this one captures.
        with self.capture_guard(), torch.cuda.graph(graph, capture_error_mode="thread_local"), torch.no_grad():
            outputs = self.fn(static_image, static_mode)
        return graph, static_image, static_mode, outputs

    def __call__(self, image, mode) -> tuple:
        if self.failed:
            return self.fn(image, mode)
        key = tuple(image.shape)
        entry = self.cache.pop(key, None)
        if entry is None:
            while len(self.cache) >= self.max_shapes:
                self.cache.popitem(last=False)
            try:
                entry = self._capture(image, mode)
            except RuntimeError as exc:
                if _out_of_memory(exc):
                    # this batch does not fit now: the caller runs its photos one at a time
                    # (`Runner.process`), whose shape gets a graph of its own; were graphs
                    # turned off, every later batch would run eagerly, ~436 ms per batch of 16
                    self.torch.cuda.synchronize()
                    self.torch.cuda.empty_cache()
                    raise
                # a driver or build that cannot capture: stay correct, run eagerly
                self.failed = f"CUDA graph capture failed, running eagerly: {exc}"
                self.torch.cuda.synchronize()
                return self.fn(image, mode)
        else:
            entry[1].copy_(image)
            entry[2].copy_(mode)
        self.cache[key] = entry
        entry[0].replay()
        return entry[3]


def _out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is, or was raised while handling, CUDA running out of memory (ending a
    capture that failed can raise an error of its own over it)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError":
            return True
        exc = exc.__cause__ or exc.__context__
    return False
