"""Exportable graphs, ONNX export and checks, TensorRT engine builds, backend parity."""
