"""Submission ids and the files that carry them."""
from __future__ import annotations

import re
from pathlib import Path

from lens.conventions import WORKLOAD_INPUT_SUFFIX, WORKLOAD_TARGET_SUFFIX
from lens.runtime.io import is_workload_target, output_stem

#: A submission entry: a flat, safe file name ending in lowercase .jpg.
ENTRY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.jpg$")
INPUT_SUFFIXES = (WORKLOAD_INPUT_SUFFIX, ".jpg", ".jpeg", ".png")
TARGET_SUFFIXES = (WORKLOAD_TARGET_SUFFIX, ".jpg", ".jpeg", ".png")


def id_of_input(path: Path) -> str:
    """The id `lens run` names the input's correction by (`output_stem`)."""
    return output_stem(path)


def input_files(folder: str | Path) -> dict[str, Path]:
    """Inputs by id: ``<id>_original.jpg`` (workload layout) or ``<id>.jpg``; a target
    ``<id>_generated.jpg`` beside its input is not one (`is_workload_target`, as `lens run`)."""
    files = [p for p in sorted(Path(folder).iterdir()) if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    names = {(p.parent, p.name.lower()) for p in files}
    return {id_of_input(p): p for p in files if not is_workload_target(p, names)}


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
