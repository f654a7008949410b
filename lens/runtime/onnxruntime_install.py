"""Detect the broken install where `onnxruntime` and `onnxruntime-gpu` sit side by side.

Both wheels ship the same `onnxruntime/` package; whichever was installed last wins file by
file, and uninstalling either deletes files the other needs. `lens` refuses to run on such a mix
rather than fail later with a missing provider or a half-deleted module.
"""
from __future__ import annotations

from importlib import metadata

REPAIR = (
    "pip uninstall -y onnxruntime onnxruntime-gpu && pip install --no-deps --force-reinstall 'onnxruntime-gpu>=1.18'"
    "   (or, for CPU only: ... && pip install onnxruntime)"
)


def installed_onnxruntime_distributions() -> list[str]:
    """Names of the installed distributions that provide the `onnxruntime` module."""
    found = []
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def conflict_message() -> str | None:
    """A one-paragraph explanation and fix when both are installed, else None."""
    found = installed_onnxruntime_distributions()
    if len(found) < 2:
        return None
    return (
        "both onnxruntime and onnxruntime-gpu are installed; they overwrite each other's files "
        f"and the result is unreliable. Keep exactly one: {REPAIR}"
    )
