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
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the audit and the split need no torch
    import torch

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
        try:
            records = json.loads(meta_path.read_text(encoding="utf-8-sig"))["pairs"]
            for rec in records:
                shoots[rec["pair_id"]] = rec.get("photoshoot_uuid") or shoot_of(rec["pair_id"])
        except (ValueError, KeyError, TypeError) as exc:  # a cut or hand-edited file: its shoots decide the split
            raise ValueError(f"{meta_path}: not the workload's metadata ({type(exc).__name__}: {exc}); "
                             "fix or remove it (without it, a pair's shoot is its id up to _g<N>)") from None
    originals = {p.name[: -len(ORIGINAL_SUFFIX)]: p for p in folder.glob(f"*{ORIGINAL_SUFFIX}")}
    generated = {p.name[: -len(GENERATED_SUFFIX)]: p for p in folder.glob(f"*{GENERATED_SUFFIX}")}
    pairs = [Pair(i, originals[i], generated[i], shoots.get(i, shoot_of(i))) for i in sorted(originals.keys() & generated.keys())]
    unmatched = sorted([originals[i].name for i in originals.keys() - generated.keys()] + [generated[i].name for i in generated.keys() - originals.keys()])
    return pairs, unmatched


def split_by_shoot(pairs: list[Pair], val_fraction: float = 0.1, seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    """Train/validation split that keeps every shoot on one side. A shoot's side depends only
    on its id and the seed (a hash), so adding data never moves existing shoots."""
    def to_val(shoot: str) -> bool:
        digest = hashlib.sha256(f"{seed}:{shoot}".encode("utf-8", "surrogateescape")).digest()  # a non-UTF-8 name: its own bytes
        return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction

    train = [p for p in pairs if not to_val(p.shoot)]
    val = [p for p in pairs if to_val(p.shoot)]
    return train, val


def read_labels(folder: str | Path) -> dict[str, dict]:
    path = Path(folder) / LABELS_FILE
    if not path.exists():
        return {}
    labels = {}
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        try:
            rec = json.loads(line) if line.strip() else None
            if rec:
                labels[rec["pair_id"]] = rec
        except (ValueError, KeyError, TypeError) as exc:  # a hand edit: say where, not only what
            raise ValueError(f"{path}, line {number}: not a label ({type(exc).__name__}: {exc}); "
                             "fix or delete that line (lens data pseudo-label --resume fits the pairs left without one)") from None
    return labels


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


#: Pairs whose pseudo-label leaves more than this mean grey-level difference are not trained on
#: (the parametric warp does not explain them: a retouched target, a crop).
MAX_FIT_RESIDUAL_GREY = 2.5
#: Nor pairs whose fitted zoom is this far from 1: the model's warp is framed at alpha = 0.
MAX_ZOOM_GAP = 0.02


@dataclass
class PairPool:
    """A folder's labelled training-split pairs, ready for `draw_pair_batch`: the inputs resized
    to ``width`` (aspect kept) and grouped by the size that gives, with their labels."""

    groups: list[tuple[torch.Tensor, torch.Tensor]]  # (N, 3, h, w) uint8 inputs, (N, 8) labels
    used: int
    left_out: dict[str, int]  # reason -> pairs
    fingerprint: str

    def summary(self, folder: str | Path) -> str:
        out = ", ".join(f"{n} {reason}" for reason, n in self.left_out.items() if n)
        return f"{self.used} labelled pairs of {folder}'s training split" + (f" ({out} left out)" if out else "")


def load_pair_pool(folder: str | Path, width: int, max_residual: float = MAX_FIT_RESIDUAL_GREY, workers: int = 0,
                   split: str = "train", limit: int = 0) -> PairPool:
    """The labelled pairs of ``folder``'s training split (`split_by_shoot`; `lens eval --data`
    keeps the other shoots for validation), for geometric supervision by their labels, decoded
    on ``workers`` threads (0: one per usable core); ``split="val"``: its held-out shoots'
    pairs instead, the first ``limit`` by id (0: all). ValueError if none is left."""
    from concurrent.futures import ThreadPoolExecutor

    import cv2
    import torch

    from lens.geometry import LensParams
    from lens.runtime.cpu_budget import usable_cores
    from lens.runtime.io import ImageReadError, read_image

    if split not in ("train", "val"):
        raise ValueError(f"split must be train or val, not {split!r}")
    pairs, _ = find_pairs(folder)
    labels = read_labels(folder)
    train, val = split_by_shoot(pairs)
    chosen = train if split == "train" else val
    residual = "with a fit residual over %.1f grey levels" % max_residual
    left_out = {"without a label": 0, residual: 0, "zoomed": 0, "unreadable": 0}
    kept = []
    for pair in chosen:
        label = labels.get(pair.pair_id)
        if label is None:
            left_out["without a label"] += 1
        elif label.get("fit_residual_grey", 0.0) > max_residual:
            left_out[residual] += 1
        elif abs(label.get("zoom", 1.0) - 1.0) > MAX_ZOOM_GAP:
            left_out["zoomed"] += 1
        else:
            kept.append((pair, label))
    if limit:
        kept = kept[:limit]

    def small_input(pair: Pair) -> np.ndarray | None:
        """The input at ``width`` (aspect kept): ~0.46 MB at 480 px, the default."""
        try:
            pixels = read_image(pair.original).pixels
        except ImageReadError:
            return None
        rgb = np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels[..., :3]
        return cv2.resize(rgb, (width, max(2, round(width * rgb.shape[0] / rgb.shape[1]))), interpolation=cv2.INTER_AREA)

    by_size: dict[tuple[int, int], tuple[list, list]] = {}
    digest = hashlib.sha256()
    with ThreadPoolExecutor(workers or usable_cores()) as pool:
        for (pair, label), small in zip(kept, pool.map(small_input, [pair for pair, _ in kept])):
            if small is None:
                left_out["unreadable"] += 1
                continue
            images, params = by_size.setdefault(small.shape[:2], ([], []))
            images.append(torch.from_numpy(np.ascontiguousarray(small)).permute(2, 0, 1))
            params.append(LensParams(**label["params"]).to_tensor()[0])
            digest.update(pair.pair_id.encode("utf-8", "surrogateescape") + json.dumps(label["params"], sort_keys=True).encode() + small.tobytes())
    used = sum(len(images) for images, _ in by_size.values())
    if not used:
        purpose = "to train on in its training split" if split == "train" else "to validate on in its held-out shoots"
        why = ", ".join(f"{n} {reason}" for reason, n in left_out.items() if n)
        raise ValueError(f"{folder}: no labelled pairs {purpose} ({len(chosen)} pairs{'; ' + why if why else ''})"
                         + ("" if chosen else ": a folder of <id>_original.jpg / <id>_generated.jpg pairs labelled by `lens data pseudo-label`"))
    groups = [(torch.stack(images), torch.stack(params)) for _, (images, params) in sorted(by_size.items())]
    return PairPool(groups, used, left_out, digest.hexdigest()[:16])


def _batch_of(images: torch.Tensor, params: torch.Tensor, device: str | torch.device):
    """Pairs of one size as a `lens.training.batches.Batch`: the inputs as they are, supervised
    by their labels."""
    import torch

    from lens.training.batches import Batch

    chosen = images.to(device).float()
    return Batch(chosen, torch.full((len(chosen),), chosen.shape[-2] / chosen.shape[-1], device=device), params.to(device))


def pair_batches(pool: PairPool, batch: int, device: str | torch.device = "cpu") -> list:
    """Every pair of ``pool`` once, in batches of up to ``batch`` of one size, in a fixed order:
    a validation set."""
    return [_batch_of(images[i : i + batch], params[i : i + batch], device) for images, params in pool.groups for i in range(0, len(params), batch)]


def draw_pair_batch(pool: PairPool, batch: int, rng: np.random.Generator, device: str | torch.device = "cpu"):
    """A batch of real pairs of one size (a group drawn in proportion to its pairs)."""
    import torch

    sizes = np.array([len(params) for _, params in pool.groups], dtype=np.float64)
    images, params = pool.groups[int(rng.choice(len(sizes), p=sizes / sizes.sum()))]
    idx = torch.from_numpy(rng.integers(0, len(params), size=batch))
    return _batch_of(images[idx], params[idx], device)
