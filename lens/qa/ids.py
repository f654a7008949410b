"""Submission ids and the files that carry them."""
from __future__ import annotations

import re
from pathlib import Path

from lens.conventions import WORKLOAD_TARGET_SUFFIX
from lens.runtime.io import claim_output_names, image_id, list_images

#: A submission entry: a flat, safe file name ending in lowercase .jpg.
ENTRY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.jpg$")
TARGET_SUFFIXES = (WORKLOAD_TARGET_SUFFIX, ".jpg", ".jpeg", ".png")


def input_files(folder: str | Path) -> dict[str, Path]:
    """Inputs by id, as `lens run` names their corrections (`claim_output_names`): any image
    file it reads, ``<id>_original.jpg`` as ``<id>`` (workload layout); a target
    ``<id>_generated.jpg`` beside its input is not one, nor is an input whose output name
    another input has."""
    named, _ = claim_output_names(list_images(Path(folder)), Path(folder))
    return {image_id(name): p for name, p in named.items()}


def find_by_id(folder: str | Path, image_id: str, suffixes: tuple[str, ...]) -> Path | None:
    for suffix in suffixes:
        p = Path(folder) / f"{image_id}{suffix}"
        if p.is_file():
            return p
    return None


def read_ids(path: str | Path) -> list[str]:
    """One id per line (blank lines and ``#`` comments ignored); a trailing .jpg is dropped.
    A byte-order mark (a list saved by Excel or Notepad as "UTF-8 with BOM") is not part of the
    first id: it made that id missing and its file an extra. UTF-16 with its byte-order mark
    (Excel's "Unicode Text", Windows Notepad's "Unicode") is read too: it stopped `lens qa` with
    a UnicodeDecodeError. Raises ValueError naming the file for other bytes."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-16") if data[:2] in (b"\xff\xfe", b"\xfe\xff") else data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a text file of ids (UTF-8 or UTF-16): byte {exc.start} is {data[exc.start : exc.start + 1]!r}") from None
    ids = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            ids.append(line[:-4] if line.lower().endswith(".jpg") else line)
    return ids
