"""Checkpoints: weights plus everything needed to know where they came from.

A checkpoint is a plain dict of tensors, numbers, strings and lists, so it loads with
``torch.load(weights_only=True)`` (no pickled code runs when a file is opened).
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import subprocess
from pathlib import Path

import torch

from lens.runtime.io import write_atomic
from lens.training.model import LensNet, ModelConfig

STAGES = ("param", "hybrid", "finetune")
PARENT_STAGE = {"param": None, "hybrid": "param", "finetune": "hybrid"}


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def git_commit() -> str:
    """The source commit; LENS_GIT_COMMIT names it where the tree has no .git (a copied tree)."""
    if os.environ.get("LENS_GIT_COMMIT"):
        return os.environ["LENS_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """Atomic save: a killed run never leaves a truncated checkpoint."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    write_atomic(path, buf.getvalue(), durable=True)


class CheckpointError(ValueError):
    """A file that is not a usable lens checkpoint; the message names it and says why."""


FORMAT = "lens-checkpoint/"
_REQUIRED = ("model", "model_config", "stage")


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with path.open("rb") as fh:
        head = fh.read(4)
    if head != b"PK\x03\x04":  # torch.save's zip archive, the only form lens writes
        raise CheckpointError(f"{path}: not a lens checkpoint (one is torch.save's zip archive; this file starts with {head!r})")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's own text advises weights_only=False, which would run the file's code
        raise CheckpointError(f"{path}: not a loadable lens checkpoint (it holds pickled objects other than tensors and "
                              "plain data, which lens does not load: unpickling them can run code)") from None
    except Exception as exc:  # a cut or damaged archive: torch's first sentence says where
        said = " ".join(str(exc).split())
        raise CheckpointError(f"{path}: not a loadable lens checkpoint, damaged ({said.split('. ')[0]})") from None
    # a plain state dict or another tool's file loads too, and failed later on a missing key
    if not isinstance(ckpt, dict) or not str(ckpt.get("format", "")).startswith(FORMAT):
        raise CheckpointError(f"{path}: not a lens checkpoint (no '{FORMAT}...' format field: a plain state dict or another tool's file?)")
    missing = [k for k in _REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: incomplete lens checkpoint (missing {', '.join(missing)})")
    return ckpt


def model_config_of(ckpt: dict) -> ModelConfig:
    """The checkpoint's model config; checkpoints from before ``param_head`` existed used raw
    coefficients."""
    return ModelConfig(**{"param_head": "coefficients", **ckpt["model_config"]})


def model_from_checkpoint(ckpt: dict) -> LensNet:
    try:
        model = LensNet(model_config_of(ckpt))
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError) as exc:  # a config or weights of another version of the model
        detail = " ".join(line.strip() for line in str(exc).splitlines()[:2])  # torch's first line only says that it failed
        raise CheckpointError(f"the checkpoint's model does not match this version of lens: {detail[:300]}") from None
    return model.eval()
