"""Lean batch inference: image I/O, sampling, backends, safety, fallback, writing.

Imports neither torch nor the training code unless the torch backend is asked for."""
