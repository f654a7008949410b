"""Paired data in the workload's layout, its shoot-grouped split, and `lens data audit`.

Layout: a flat folder of ``<id>_original.jpg`` (distorted input) and ``<id>_generated.jpg``
(corrected target); ids look like ``<shoot-uuid>_g<N>``. An optional
``training_metadata.json`` lists ``pairs: [{pair_id, original, generated, photoshoot_uuid}]``.
An optional ``labels.jsonl`` (written by `lens data synth` with the true parameters, or by
`lens data pseudo-label` with fitted ones) gives ``{"pair_id", "params": {k1: ..}, ...}`` per line.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ORIGINAL_SUFFIX = "_original.jpg"
GENERATED_SUFFIX = "_generated.jpg"
LABELS_FILE = "labels.jsonl"


@dataclass
class Pair:
    pair_id: str
    original: Path
    generated: Path
    shoot: str


def shoot_of(pair_id: str) -> str:
    """The shoot a pair belongs to: the id without its trailing ``_g<N>``."""
    return re.sub(r"_g\d+$", "", pair_id)


def find_pairs(folder: str | Path) -> tuple[list[Pair], list[str]]:
    """Pairs present on disk, sorted by id, and the names of files that have no partner."""
    folder = Path(folder)
    meta_path = folder / "training_metadata.json"
    shoots: dict[str, str] = {}
    if meta_path.exists():
        for rec in json.loads(meta_path.read_text()).get("pairs", []):
            shoots[rec["pair_id"]] = rec.get("photoshoot_uuid") or shoot_of(rec["pair_id"])
    originals = {p.name[: -len(ORIGINAL_SUFFIX)]: p for p in folder.glob(f"*{ORIGINAL_SUFFIX}")}
    generated = {p.name[: -len(GENERATED_SUFFIX)]: p for p in folder.glob(f"*{GENERATED_SUFFIX}")}
    pairs = [Pair(i, originals[i], generated[i], shoots.get(i, shoot_of(i))) for i in sorted(originals.keys() & generated.keys())]
    unmatched = sorted([originals[i].name for i in originals.keys() - generated.keys()] + [generated[i].name for i in generated.keys() - originals.keys()])
    return pairs, unmatched


def split_by_shoot(pairs: list[Pair], val_fraction: float = 0.1, seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    """Train/validation split that keeps every shoot on one side. A shoot's side depends only
    on its id and the seed (a hash), so adding data never moves existing shoots."""
    def to_val(shoot: str) -> bool:
        digest = hashlib.sha256(f"{seed}:{shoot}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction

    train = [p for p in pairs if not to_val(p.shoot)]
    val = [p for p in pairs if to_val(p.shoot)]
    return train, val


def read_labels(folder: str | Path) -> dict[str, dict]:
    path = Path(folder) / LABELS_FILE
    if not path.exists():
        return {}
    return {rec["pair_id"]: rec for rec in map(json.loads, path.read_text().splitlines()) if rec}


@dataclass
class AuditReport:
    folder: str
    pairs: int = 0
    shoots: int = 0
    unmatched: list[str] = field(default_factory=list)
    unreadable: list[dict] = field(default_factory=list)
    size_mismatch: list[dict] = field(default_factory=list)
    near_identical: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return self.__dict__.copy()

    @property
    def clean(self) -> bool:
        return not (self.unmatched or self.unreadable or self.size_mismatch)


def _thumb(path: Path) -> tuple[np.ndarray, int, int]:
    """A 128 x 96 grey thumbnail and the stored width and height; `ImageReadError` if unreadable."""
    import cv2

    from lens.runtime.io import read_image

    image = read_image(path, draft=(128, 96))
    pixels = image.pixels
    grey = pixels[..., 0] if pixels.shape[2] == 1 else cv2.cvtColor(pixels[..., :3], cv2.COLOR_RGB2GRAY)
    height, width = image.stored_size or pixels.shape[:2]
    return cv2.resize(grey, (128, 96), interpolation=cv2.INTER_AREA).astype(np.float32), width, height


def _pair_thumbs(pair: Pair):
    from lens.runtime.io import ImageReadError

    try:
        return _thumb(pair.original), _thumb(pair.generated)
    except ImageReadError as exc:
        return exc


def audit(folder: str | Path, near_identical_grey: float = 0.5, on_pair=None, workers: int = 0) -> AuditReport:
    """Counts, sizes, unmatched and unreadable files, size mismatches and near-identical pairs
    (mean absolute difference of 128 x 96 thumbnails below ``near_identical_grey`` levels:
    a "correction" that did nothing teaches the model the identity). Files are decoded on
    ``workers`` threads (0: one per usable core; decoding releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    from lens.runtime.cpu_budget import usable_cores

    pairs, unmatched = find_pairs(folder)
    report = AuditReport(str(folder), pairs=len(pairs), shoots=len({p.shoot for p in pairs}), unmatched=unmatched)
    with ThreadPoolExecutor(workers or usable_cores()) as pool:
        for pair, thumbs in zip(pairs, pool.map(_pair_thumbs, pairs)):
            if on_pair:
                on_pair()
            if isinstance(thumbs, Exception):
                report.unreadable.append({"file": thumbs.path.name, "reason": thumbs.reason})
                continue
            (a, aw, ah), (b, bw, bh) = thumbs
            key = f"{aw}x{ah}"
            report.sizes[key] = report.sizes.get(key, 0) + 1
            if (aw, ah) != (bw, bh):
                report.size_mismatch.append({"pair_id": pair.pair_id, "original": [aw, ah], "generated": [bw, bh]})
            elif float(np.abs(a - b).mean()) < near_identical_grey:
                report.near_identical.append(pair.pair_id)
    return report


def write_synthetic_dataset(out: str | Path, regime: str, count: int, seed: int = 0, width: int = 2048, height: int = 1366, on_pair=None) -> Path:
    """Held-out synthetic pairs in the workload layout, with the true parameters in
    ``labels.jsonl`` and shoots of four pairs in ``training_metadata.json``."""
    from lens.geometry import LensParams
    from lens.runtime.io import DecodedImage, write_atomic, write_image
    from lens.training.batches import synthetic_samples

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records, labels = [], []
    for i, s in enumerate(synthetic_samples(regime, count, seed, width, height)):
        shoot = f"synth-{regime}-{seed}-{i // 4:04d}"
        pair_id = f"{shoot}_g{i % 4}"
        write_image(out / f"{pair_id}{ORIGINAL_SUFFIX}", DecodedImage(s.original))
        write_image(out / f"{pair_id}{GENERATED_SUFFIX}", DecodedImage(s.target))
        records.append({"pair_id": pair_id, "original": f"{pair_id}{ORIGINAL_SUFFIX}", "generated": f"{pair_id}{GENERATED_SUFFIX}", "photoshoot_uuid": shoot})
        labels.append({"pair_id": pair_id, "params": LensParams.from_sequence(s.params[0].tolist()).as_dict(), "source": f"synthetic:{regime}"})
        if on_pair:
            on_pair()
    write_atomic(out / "training_metadata.json", json.dumps({"pairs": records}, indent=1).encode())
    write_atomic(out / LABELS_FILE, "".join(json.dumps(r, sort_keys=True) + "\n" for r in labels).encode())
    return out
