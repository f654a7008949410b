"""Submission ids and the files that carry them."""
from __future__ import annotations

import re
from pathlib import Path

#: A submission entry: a flat, safe file name ending in lowercase .jpg.
ENTRY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.jpg$")
INPUT_SUFFIXES = ("_original.jpg", ".jpg", ".jpeg", ".png")
TARGET_SUFFIXES = ("_generated.jpg", ".jpg", ".jpeg", ".png")


def id_of_input(path: Path) -> str:
    name = path.name
    for suffix in INPUT_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def input_files(folder: str | Path) -> dict[str, Path]:
    """Inputs by id: ``<id>_original.jpg`` (workload layout) or ``<id>.jpg``; targets
    (``*_generated.jpg``) in the same folder are not inputs."""
    out = {}
    for p in sorted(Path(folder).iterdir()):
        if p.is_file() and not p.name.startswith(".") and not p.name.endswith("_generated.jpg") and p.suffix.lower() in (".jpg", ".jpeg", ".png"):
            out[id_of_input(p)] = p
    return out


def find_by_id(folder: str | Path, image_id: str, suffixes: tuple[str, ...]) -> Path | None:
    for suffix in suffixes:
        p = Path(folder) / f"{image_id}{suffix}"
        if p.is_file():
            return p
    return None


def read_ids(path: str | Path) -> list[str]:
    """One id per line (blank lines and ``#`` comments ignored); a trailing .jpg is dropped."""
    ids = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            ids.append(line[:-4] if line.lower().endswith(".jpg") else line)
    return ids
