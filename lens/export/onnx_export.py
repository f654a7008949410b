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
    optimize: bool = False,
) -> Path:
    """Export ``module`` with torch's dynamo exporter to ``path``.

    ``dynamic_axes`` maps an input name to ``{axis: symbol}``; equal symbols share one dynamic
    dimension (e.g. ``"B"`` on every input). The file is written atomically.

    ``optimize`` runs onnxscript's graph optimiser; off by default because ONNX Runtime and
    TensorRT optimise the graph on load anyway and the pass doubles the export time."""
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
    import contextlib
    import io
    import warnings

    # The exporter prints its progress and warns about internals; a CLI shows its own status.
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            example_inputs,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_shapes=dynamic_shapes,
            opset_version=opset,
            dynamo=True,
            optimize=optimize,
            verbose=False,
        )
    program.save(str(tmp))
    _castlike_to_cast(tmp)
    tmp.replace(path)
    return path


def _castlike_to_cast(path: Path) -> None:
    """Rewrite ``CastLike(x, like)`` as ``Cast(x, to=type(like))``: the exporter emits CastLike
    when its optimiser is off, and TensorRT's parser imports plain Cast everywhere."""
    import onnx

    model = onnx.load(str(path))
    if not any(n.op_type == "CastLike" for n in model.graph.node):
        return
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    types[node.output[0]] = a.t.data_type
    for node in model.graph.node:
        if node.op_type == "CastLike" and types.get(node.input[1]):
            to = types[node.input[1]]
            del node.input[1]
            node.op_type = "Cast"
            del node.attribute[:]
            node.attribute.append(onnx.helper.make_attribute("to", to))
    onnx.save(model, str(path))


def symbolic_shapes(path: str | Path) -> dict[str, list[str | int]]:
    """Each graph input's and output's shape as the file states it (symbols or numbers)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    dims = lambda vi: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]  # noqa: E731
    return {vi.name: dims(vi) for vi in list(model.graph.input) + list(model.graph.output)}
