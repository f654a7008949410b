"""TensorRT-compatibility lint of an ONNX graph, run on every export.

TensorRT's ONNX parser supports a fixed operator set and reads some attributes its own way. The
traps that silently change results are checked explicitly:

- GridSample's ``mode``: the parser knows "bilinear", "nearest" and "bicubic" (opset 16 names);
  opset 20 renamed bilinear to "linear", which the parser does not recognise and treats as
  nearest. Exports use opset 18; a "linear" GridSample fails the lint.
- Resize with ``antialias=1``: not supported by TensorRT's resize layer.
- TopK: TensorRT limits K to 3840; the safety statistics' K grows with the image area, which
  caps TensorRT engines at about 24 megapixels (documented in the README).
"""
from __future__ import annotations

from pathlib import Path

import onnx

#: Operators of the ONNX standard domain that TensorRT 10's parser imports.
TENSORRT_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu Clip
Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout
Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool
GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization HardSigmoid HardSwish Identity If
InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LpNormalization
LpPool LRN MatMul Max MaxPool Mean Min Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad Pow PRelu
QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2
ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape
Resize ReverseSequence RoiAlign Round Scan ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size
Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK
Transpose Trilu Unsqueeze Where Xor
""".split())
GRIDSAMPLE_MODES = {b"bilinear", b"nearest", b"bicubic"}


def lint(model: onnx.ModelProto | str | Path) -> list[str]:
    """Problems that would stop TensorRT from building the graph or change its results."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    problems = []
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    graphs.append(attr.g)
            if node.domain not in ("", "ai.onnx"):
                problems.append(f"{node.name or node.op_type}: operator {node.domain}::{node.op_type} is not in TensorRT's ONNX parser")
                continue
            if node.op_type not in TENSORRT_OPS:
                problems.append(f"{node.name or node.op_type}: operator {node.op_type} is not supported by TensorRT's ONNX parser")
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type == "GridSample" and attrs.get("mode", b"bilinear") not in GRIDSAMPLE_MODES:
                problems.append(f"{node.name or node.op_type}: GridSample mode {attrs['mode'].decode()!r}; TensorRT's parser reads only "
                                "'bilinear', 'nearest', 'bicubic' and would sample nearest: export at opset <= 19")
            if node.op_type == "Resize" and attrs.get("antialias", 0):
                problems.append(f"{node.name or node.op_type}: Resize with antialias=1 is not supported by TensorRT")
    return problems
