"""`lens parity`: the same images through every backend, compared output by output.

Each backend is a runner with one method, ``run(image, mode_override) -> dict`` of the graph's
outputs (polygraphy's runner idea, so comparing backends is one loop). The reference is the
first backend (torch). Both exported graphs are compared: the sampled one (corrected image)
and the CPU one (its sampling lattice, in pixels; its two ONNX halves run one after the other).

Tolerances (`TOLERANCES`) per precision, measured on the default model on a 2-core CPU
(README "Parity"): fp32 torch vs ONNX Runtime differ by ~1e-6 in parameters, ~1e-4 px in
grids and at most 1 grey level on <0.01% of pixels; the bars below leave an order of
magnitude of room without letting a real bug through. fp16 runs the network layers in half
precision, which moves parameters by ~1e-3 and pixels by a level or two near edges.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lens.runtime.backends import LATTICE_INPUTS, ONNX_CPU_NETWORK, ONNX_CPU_WARP, lattice_feed, run_cpu_halves
from lens.runtime.io import ImageReadError, list_images, read_image

TOLERANCES = {
    "fp32": {"params_rel": 1e-4, "grid_px": 0.01, "image_max_levels": 255, "image_share_over_1": 0.001},
    "fp16": {"params_rel": 2e-2, "grid_px": 0.5, "image_max_levels": 255, "image_share_over_1": 0.01},
}


def _feed(image: np.ndarray, sampled: bool) -> dict[str, np.ndarray]:
    """A graph's inputs for a ``(B, H, W, 3)`` uint8 batch, automatic mode."""
    modes = np.full((image.shape[0],), -1, dtype=np.int64)
    return {"image": np.ascontiguousarray(image.transpose(0, 3, 1, 2)), "mode_override": modes} if sampled else lattice_feed(image, modes)


class Runner:
    name = "runner"

    def run(self, image: np.ndarray, sampled: bool) -> dict[str, np.ndarray]:
        """``(1, H, W, 3)`` uint8 photo -> the sampled graph's outputs, or the CPU graph's."""
        raise NotImplementedError


class TorchRunner(Runner):
    name = "torch"

    def __init__(self, checkpoint: Path, precision: str):
        import torch

        from lens.export.graph import LATTICE_OUTPUTS, SAMPLED_OUTPUTS, LensGraph, LensMapsGraph
        from lens.training.checkpoint import load_checkpoint, model_from_checkpoint

        ckpt = load_checkpoint(checkpoint)
        residual = ckpt["stage"] != "param"
        self.torch = torch
        self.graphs = {
            True: (LensGraph(model_from_checkpoint(ckpt), residual, half=precision == "fp16").eval(), SAMPLED_OUTPUTS),
            False: (LensMapsGraph(model_from_checkpoint(ckpt), residual, half=precision == "fp16").eval(), LATTICE_OUTPUTS),
        }

    def run(self, image, sampled):
        graph, names = self.graphs[sampled]
        feed = _feed(image, sampled)
        with self.torch.no_grad():
            outs = graph(*(self.torch.from_numpy(feed[k]) for k in (("image", "mode_override") if sampled else LATTICE_INPUTS)))
        return {n: o.numpy() for n, o in zip(names, outs)}


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"

    def __init__(self, build: Path, providers: list[str] | None = None):
        import onnxruntime as ort

        from lens.export.build import ONNX_FULL

        providers = providers or ["CPUExecutionProvider"]
        self.sampled = ort.InferenceSession(str(build / ONNX_FULL), providers=providers)
        self.cpu_halves = [ort.InferenceSession(str(build / name), providers=providers) for name in (ONNX_CPU_NETWORK, ONNX_CPU_WARP)]

    def run(self, image, sampled):
        if not sampled:
            return run_cpu_halves(*self.cpu_halves, _feed(image, sampled))
        outs = self.sampled.run(None, _feed(image, sampled))
        return {o.name: v for o, v in zip(self.sampled.get_outputs(), outs)}


class TensorRTRunner(Runner):
    """The engine (sampled graph) through polygraphy's TrtRunner; the CPU graph is not built
    as an engine, so only the sampled outputs are compared."""

    name = "tensorrt"

    def __init__(self, build: Path):
        from lens.export.tensorrt_build import tensorrt_status

        tensorrt_status()  # raises TensorRTUnavailable with the reason
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        from lens.export.build import ENGINE

        self.runner = TrtRunner(EngineFromBytes(BytesFromPath(str(build / ENGINE))))
        self.runner.activate()

    def run(self, image, sampled):
        if not sampled:
            return {}
        return dict(self.runner.infer(_feed(image, sampled)))


@dataclass
class Comparison:
    backend: str
    image: str
    size: str
    params_rel: float = 0.0
    grid_px: float = 0.0
    image_max_levels: int = 0
    image_share_over_1: float = 0.0
    modes_equal: bool = True
    failures: list[str] = field(default_factory=list)


def compare(ref: dict, other: dict, name: str, size: tuple[int, int], tol: dict, backend: str) -> Comparison:
    h, w = size
    c = Comparison(backend, name, f"{w}x{h}")
    if "params" in other:
        c.params_rel = float(np.max(np.abs(other["params"] - ref["params"]) / np.maximum(np.abs(ref["params"]), 1.0)))
    if "mode" in other:
        c.modes_equal = bool(np.array_equal(other["mode"], ref["mode"]))
    if "lattice" in other:
        c.grid_px = float(np.abs(other["lattice"] - ref["lattice"]).max())
    if "corrected" in other:
        diff = np.abs(other["corrected"].astype(np.int16) - ref["corrected"].astype(np.int16))
        c.image_max_levels = int(diff.max())
        c.image_share_over_1 = float((diff > 1).mean())
    for key in ("params_rel", "grid_px", "image_max_levels", "image_share_over_1"):
        if getattr(c, key) > tol[key]:
            c.failures.append(f"{key} {getattr(c, key):.3g} > {tol[key]:.3g}")
    if not c.modes_equal:
        c.failures.append("modes differ")
    return c


def run_parity(build: Path, images_dir: Path, backends: list[str], checkpoint: Path | None = None, on_image=None) -> dict:
    """Compare every backend with the first; returns the JSON-able report."""
    from lens.export.build import MANIFEST
    from lens.export.tensorrt_build import TensorRTUnavailable

    from lens.runtime.backends import BackendUnavailable, read_manifest

    try:  # a folder that is not a build stopped on a FileNotFoundError traceback
        manifest = read_manifest(build)
    except BackendUnavailable as exc:
        raise ValueError(str(exc)) from None
    precision = manifest.get("precision")
    if precision not in TOLERANCES:
        raise ValueError(f"{build / MANIFEST}: precision {precision!r} is none of {', '.join(TOLERANCES)}: export the build again")
    tol = TOLERANCES[precision]
    runners: list[Runner] = []
    unavailable = {}
    for b in backends:
        try:
            if b == "torch":
                runners.append(TorchRunner(checkpoint or build / manifest["checkpoint"]["file"], precision))
            elif b == "onnxruntime":
                runners.append(OnnxRuntimeRunner(build))
            elif b == "tensorrt":
                runners.append(TensorRTRunner(build))
            else:
                raise ValueError(f"unknown backend {b!r}: choose from torch, onnxruntime, tensorrt")
        except (TensorRTUnavailable, FileNotFoundError, ImportError) as exc:
            unavailable[b] = str(exc)
    comparisons, unreadable = [], []
    if len(runners) >= 2:
        for path in list_images(images_dir):
            try:
                pixels = read_image(path).pixels
            except ImageReadError as exc:
                unreadable.append({"file": path.name, "reason": exc.reason})
                if on_image:
                    on_image()
                continue
            rgb = np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels[..., :3]
            for sampled in (True, False):
                outs = [r.run(rgb[None], sampled) for r in runners]
                for runner, out in zip(runners[1:], outs[1:]):
                    if out:
                        comparisons.append(compare(outs[0], out, path.name, rgb.shape[:2], tol, runner.name))
            if on_image:
                on_image()
    merged: dict[tuple[str, str], Comparison] = {}
    for c in comparisons:  # one row per (backend, image): the worst of both graphs
        key = (c.backend, c.image)
        if key not in merged:
            merged[key] = c
            continue
        m = merged[key]
        m.params_rel, m.grid_px = max(m.params_rel, c.params_rel), max(m.grid_px, c.grid_px)
        m.image_max_levels = max(m.image_max_levels, c.image_max_levels)
        m.image_share_over_1 = max(m.image_share_over_1, c.image_share_over_1)
        m.modes_equal = m.modes_equal and c.modes_equal
        m.failures += c.failures
    rows = [vars(c) for c in merged.values()]
    passed = bool(rows) and all(not r["failures"] for r in rows) and not unavailable
    return {"build": str(build), "precision": precision, "tolerances": tol, "reference": runners[0].name if runners else None,
            "backends": [r.name for r in runners], "unavailable": unavailable, "unreadable": unreadable, "rows": rows, "passed": passed}
