"""`lens export`: checkpoint -> ONNX graphs (+ TensorRT engines where possible) + manifest.

Artefacts in the output folder:

- ``lens.onnx``: `LensGraph` with the full-resolution GridSample (GPU backends, TensorRT);
- ``lens_cpu_network.onnx`` and ``lens_cpu_warp.onnx``: `LensMapsGraph`, the same network and
  decisions reading every other pixel and row and ending in the fused grid on a lattice (the
  CPU backend enlarges it into maps for OpenCV), exported as one graph and cut in two where the
  network's outputs enter the geometry (`cut_cpu_graph`), so that the runtime can skip the
  warp half where the line fit replaces the network's warp;
- ``lens.engine`` where TensorRT and a GPU exist;
- ``checkpoint.pt``: the checkpoint exported (for parity and the torch backend);
- ``manifest.json``: hashes, opset, precision, shape profile, versions, GPU.

Every ONNX graph passes, before the export reports success: ``onnx.checker`` (full check),
shape inference with B, H and W still symbolic, an ONNX Runtime session at two image sizes,
and the TensorRT lint (`lens.export.lint`); the CPU graph's two halves, run one after the
other, must give its outputs bit for bit at both sizes.
"""
from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from lens.export.graph import LATTICE_OUTPUTS, SAMPLED_OUTPUTS, LensGraph, LensMapsGraph
from lens.export.lint import lint
from lens.export.onnx_export import OPSET, export_onnx, symbolic_shapes
from lens.export.tensorrt_build import ShapeProfile, TensorRTUnavailable, build_engine
from lens.runtime.backends import (
    LATTICE_INPUTS,
    NETWORK_OUTPUTS,
    ONNX_CPU_NETWORK,
    ONNX_CPU_WARP,
    ONNX_CPU_WHOLE,
    WARP_INPUTS,
    WARP_OUTPUTS,
    lattice_feed,
    run_cpu_halves,
)
from lens.runtime.io import write_atomic
from lens.training.checkpoint import load_checkpoint, model_from_checkpoint, sha256_file

ONNX_FULL = "lens.onnx"
ENGINE = "lens.engine"
MANIFEST = "manifest.json"
CHECKPOINT_COPY = "checkpoint.pt"  # the build carries its checkpoint: parity and the torch backend need it
CHECK_SIZES = ((96, 144), (131, 197))  # two sizes, odd on purpose


class ExportCheckFailed(RuntimeError):
    pass


@dataclass
class ExportResult:
    out_dir: Path
    manifest: dict
    engine_note: str = ""
    problems: list[str] = field(default_factory=list)


def check_onnx(path: Path, sampled: bool) -> None:
    """Full checker, symbolic shapes, two-size ONNX Runtime run, TensorRT lint; raises on failure."""
    import onnxruntime as ort

    from lens.runtime.lens_maps import map_lattice_size

    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    shapes = symbolic_shapes(path)
    want_inputs = {"image": ["B", 3, "H", "W"]} if sampled else {"quarter": ["B", 3, "h", "w"], "frame": [0, "H", "W"]}
    for name, want in {**want_inputs, "mode_override": ["B"]}.items():
        if shapes.get(name) != want:
            raise ExportCheckFailed(f"{path.name}: input {name} lost its dynamic dimensions: {shapes.get(name)}")
    if sampled and shapes["corrected"] != ["B", 3, "H", "W"]:
        raise ExportCheckFailed(f"{path.name}: output corrected has shape {shapes['corrected']}")
    problems = lint(model)
    if problems:
        raise ExportCheckFailed(f"{path.name}: TensorRT lint failed:\n  " + "\n  ".join(problems))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    modes = np.array([-1, 1], dtype=np.int64)
    for h, w in CHECK_SIZES:
        image = rng.integers(0, 256, (2, 3, h, w), dtype=np.uint8)
        feed = {"image": image, "mode_override": modes} if sampled else lattice_feed(image.transpose(0, 2, 3, 1), modes)
        outs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
        if sampled and outs["corrected"].shape != image.shape:
            raise ExportCheckFailed(f"{path.name}: at {h}x{w} the output has shape {outs['corrected'].shape}")
        if not sampled and outs["lattice"].shape != (2, 2, *map_lattice_size(h, w)):
            raise ExportCheckFailed(f"{path.name}: at {h}x{w} the lattice has shape {outs['lattice'].shape}")
        if not np.isfinite(outs["params"]).all():
            raise ExportCheckFailed(f"{path.name}: non-finite parameters at {h}x{w}")


def cut_cpu_graph(whole: Path, out_dir: Path) -> tuple[Path, Path]:
    """`LensMapsGraph`'s ONNX file cut into its network half (`LATTICE_INPUTS` -> `NETWORK_OUTPUTS`)
    and its warp half (`WARP_INPUTS` -> `WARP_OUTPUTS`), written to ``out_dir``; raises unless,
    at both `CHECK_SIZES`, the halves run one after the other give the whole graph's outputs
    bit for bit."""
    import onnxruntime as ort
    from onnx.utils import extract_model

    network, warp = out_dir / ONNX_CPU_NETWORK, out_dir / ONNX_CPU_WARP
    for path, inputs, outputs in ((network, LATTICE_INPUTS, NETWORK_OUTPUTS), (warp, WARP_INPUTS, WARP_OUTPUTS)):
        part = path.with_name(f".{path.name}.part")
        extract_model(str(whole), str(part), list(inputs), list(outputs))  # runs onnx.checker on the result
        part.replace(path)
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (whole, network, warp)]
    rng = np.random.default_rng(1)
    for h, w in CHECK_SIZES:
        feed = lattice_feed(rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8), np.array([-1, 2], dtype=np.int64))
        expected = dict(zip([o.name for o in sessions[0].get_outputs()], sessions[0].run(None, feed)))
        got = run_cpu_halves(sessions[1], sessions[2], feed)
        differ = [k for k in expected if not np.array_equal(expected[k], got[k])]
        if differ:
            raise ExportCheckFailed(f"{network.name} + {warp.name}: at {h}x{w} the halves differ from the whole graph in {', '.join(differ)}")
    return network, warp


def _versions() -> dict:
    import onnxruntime

    out = {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}
    try:
        import tensorrt

        out["tensorrt"] = tensorrt.__version__
    except Exception:
        out["tensorrt"] = None
    return out


def export(checkpoint: Path, out_dir: Path, precision: str = "fp32", profile: ShapeProfile = ShapeProfile(),
           engine: bool = True, workspace_gib: float = 4.0, version_compatible: bool = False, hardware_compatible: bool = False) -> ExportResult:
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision must be fp32 or fp16, not {precision!r}")
    ckpt = load_checkpoint(checkpoint)
    model_from_checkpoint(ckpt)  # refuses another version's model before anything is written
    out_dir.mkdir(parents=True, exist_ok=True)
    use_residual = ckpt["stage"] != "param"
    modes = torch.tensor([-1, -1], dtype=torch.int64)
    variants = (
        (ONNX_FULL, LensGraph, (torch.randint(0, 256, (2, 3, 96, 144), dtype=torch.uint8), modes), ("image", "mode_override"),
         {"image": {0: "B", 2: "H", 3: "W"}, "mode_override": {0: "B"}}, SAMPLED_OUTPUTS),
        (ONNX_CPU_WHOLE, LensMapsGraph, (torch.randint(0, 256, (2, 3, 48, 72), dtype=torch.uint8), torch.zeros((0, 96, 144), dtype=torch.uint8), modes),
         LATTICE_INPUTS, {"quarter": {0: "B", 2: "h", 3: "w"}, "frame": {1: "H", 2: "W"}, "mode_override": {0: "B"}}, LATTICE_OUTPUTS),
    )
    files = {}
    for name, kind, example, inputs, axes, outputs in variants:
        graph = kind(model_from_checkpoint(ckpt), use_residual=use_residual, half=precision == "fp16").eval()
        path = export_onnx(graph, example, out_dir / name, list(inputs), list(outputs), axes)
        check_onnx(path, kind is LensGraph)
        if kind is LensGraph:
            files[name] = (sha256_file(path), "sampled")
            continue
        for half, variant in zip(cut_cpu_graph(path, out_dir), ("lattice_network", "lattice_warp")):
            files[half.name] = (sha256_file(half), variant)
        path.unlink()  # the halves are the CPU graph now

    engines, note = [], ""
    if engine:
        try:
            info = build_engine(out_dir / ONNX_FULL, out_dir / ENGINE, profile, workspace_gib, out_dir / "timing.cache", version_compatible, hardware_compatible)
            engines.append({"file": ENGINE, "sha256": sha256_file(out_dir / ENGINE), "onnx": ONNX_FULL, "profile": profile.to_dict(), **info})
        except TensorRTUnavailable as exc:
            note = f"no TensorRT engine built: {exc}"
    else:
        note = "no TensorRT engine built: --no-engine"
    import shutil

    if checkpoint.resolve() != (out_dir / CHECKPOINT_COPY).resolve():
        shutil.copyfile(checkpoint, out_dir / CHECKPOINT_COPY)
    manifest = {
        "format": "lens-build/1",
        "checkpoint": {"file": CHECKPOINT_COPY, "source": str(checkpoint), "sha256": sha256_file(checkpoint), "stage": ckpt["stage"], "git_commit": ckpt.get("git_commit"),
                       "val_metrics": ckpt.get("val_metrics", {})},
        "onnx": [{"file": n, "sha256": h, "variant": variant} for n, (h, variant) in files.items()],
        "opset": OPSET,
        "precision": precision,
        "uses_residual": use_residual,
        "profile": profile.to_dict(),
        "engines": engines,
        "engine_note": note or None,
        "model_config": ckpt["model_config"],
        "versions": _versions(),
    }
    write_atomic(out_dir / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return ExportResult(out_dir, manifest, note)
