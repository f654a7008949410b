"""ONNX export with dynamic batch and image size, and the checks every export must pass."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

#: GridSample's mode is called "bilinear" up to opset 19 and "linear" from opset 20; TensorRT's
#: ONNX parser only understands the former (it silently falls back to nearest for "linear").
OPSET = 18


def export_onnx(
    module: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: str | Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]],
    opset: int = OPSET,
) -> Path:
    """Export ``module`` with torch's dynamo exporter to ``path``.

    ``dynamic_axes`` maps an input name to ``{axis: symbol}``; equal symbols share one dynamic
    dimension (e.g. ``"B"`` on every input). The file is written atomically."""
    path = Path(path)
    dims: dict[str, torch.export.Dim] = {}
    dynamic_shapes = {}
    for name in input_names:
        axes = dynamic_axes.get(name, {})
        dynamic_shapes[name] = {
            axis: dims.setdefault(sym, torch.export.Dim(sym, min=2 if sym != "B" else 1)) for axis, sym in axes.items()
        } or None
    module = module.eval()
    # The exporter logs every step at INFO/WARNING; keep the CLI's output readable.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    tmp = path.with_name(f".{path.name}.part")
    with torch.no_grad():
        program = torch.onnx.export(
            module,
            example_inputs,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_shapes=dynamic_shapes,
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
    program.save(str(tmp))
    tmp.replace(path)
    return path


def symbolic_shapes(path: str | Path) -> dict[str, list[str | int]]:
    """Each graph input's and output's shape as the file states it (symbols or numbers)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    dims = lambda vi: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]  # noqa: E731
    return {vi.name: dims(vi) for vi in list(model.graph.input) + list(model.graph.output)}
