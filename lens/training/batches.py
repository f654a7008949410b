"""Batches of synthetic training pairs: a pool of ideal sources, fresh lens parameters per draw.

Rendering a scene costs ~50 ms on one CPU core while distorting a batch costs ~3 ms per image,
so a pool of sources is rendered once and every batch re-draws lens parameters, flips and
aspect ratios over it: unlimited distinct pairs at CPU speed.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from lens.training.scenes import render_scene
from lens.training.synth import make_pairs, sample_params

PHOTO_DIR = Path(__file__).resolve().parents[1] / "assets" / "photos"
#: Bundled public-domain photos (lens/assets/photos/README.md): two for training, one held out.
TRAIN_PHOTOS = ("rocket.jpg", "coffee.jpg")
VAL_PHOTOS = ("astronaut.jpg",)
#: Validation scenes use seeds from here on; training seeds stay below it.
VAL_SEED_BASE = 10_000_000
SOURCE_W, SOURCE_H = 480, 320
# Aspect ratios H / W and how often they occur: the workload is mostly 2048 x 1356..1380,
# some 2048 x ~1530, a few portrait.
ASPECTS = ((0.667, 0.7), (0.747, 0.2), (1.5, 0.1))


def load_photo(name: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(PHOTO_DIR / name)), cv2.COLOR_BGR2RGB)


def _render(seed_and_width: tuple[int, int]) -> np.ndarray:
    seed, width = seed_and_width
    return render_scene(seed, source_height(width), width)


def source_height(width: int) -> int:
    return width * SOURCE_H // SOURCE_W


def build_pool(count: int, seed: int, photos: tuple[str, ...], validation: bool = False, workers: int = 1,
               width: int = SOURCE_W) -> list[np.ndarray]:
    """``count`` RGB sources, ``width`` x 2/3 of it: scenes, and each photo every 8th slot.
    Scenes depend only on their seeds, so ``workers`` processes give the same pool. A model
    with a larger input needs larger sources (`to_model_input` first halves the image)."""
    images = [load_photo(n) for n in photos]
    base = VAL_SEED_BASE if validation else 0
    photo_slots = {i for i in range(count) if images and i % 8 == 7}
    seeds = [(base + seed * 100_003 + i, width) for i in range(count) if i not in photo_slots]
    if workers > 1:
        import os
        from concurrent.futures import ProcessPoolExecutor

        from lens.runtime.child_processes import exit_with_parent

        with ProcessPoolExecutor(workers, initializer=exit_with_parent, initargs=(os.getpid(),)) as ex:
            scenes = iter(list(ex.map(_render, seeds, chunksize=16)))
    else:
        scenes = map(_render, seeds)
    pool = []
    for i in range(count):
        if i in photo_slots:
            pool.append(cv2.resize(images[(i // 8) % len(images)], (width, source_height(width)), interpolation=cv2.INTER_AREA))
        else:
            pool.append(next(scenes))
    return pool


def fingerprint(pool: list[np.ndarray]) -> str:
    """sha256 over the pool's pixels: identifies the training data in checkpoints."""
    h = hashlib.sha256()
    for img in pool:
        h.update(np.ascontiguousarray(img).tobytes())
    return h.hexdigest()[:16]


@dataclass
class Batch:
    images: torch.Tensor  # (B, 3, H, W) float [0, 255], the distorted inputs
    aspect: torch.Tensor  # (B,) H / W
    params: torch.Tensor  # (B, 8) true parameters
    targets: torch.Tensor | None = None  # (B, 3, H, W) corrected targets, when asked for


def pool_on_device(pool: list[np.ndarray], device: str | torch.device) -> torch.Tensor:
    """The pool as one ``(N, 3, H, W)`` uint8 tensor on ``device`` (a GPU): `draw_batch` then
    assembles batches there, without the CPU (which limited a GPU run to ~500 pairs/s)."""
    return torch.from_numpy(np.stack(pool)).permute(0, 3, 1, 2).contiguous().to(device)


@dataclass
class BatchPlan:
    """A batch's random draws, made on the host: which sources, flips, shape and lenses.
    `synthesize` turns it into pairs on the pool's device with no host sync, so a captured
    training step (`lens.training.captured_step`) can replay it."""

    portrait: bool
    height: int
    width: int
    indices: torch.Tensor  # (B,) int64, into the pool
    flips: torch.Tensor  # (B,) bool
    params: torch.Tensor  # (B, 8) float32


def plan_batch(pool_size: int, source_hw: tuple[int, int], batch: int, rng: np.random.Generator, workload_share: float) -> BatchPlan:
    aspects, weights = zip(*ASPECTS)
    aspect = aspects[int(rng.choice(len(aspects), p=np.array(weights) / sum(weights)))]
    portrait = aspect > 1
    w = source_hw[1] if not portrait else source_hw[0]
    h = int(round(w * aspect))
    indices = torch.from_numpy(rng.integers(0, pool_size, size=batch))
    flips = torch.from_numpy(rng.random(batch) < 0.5)
    n_work = int(rng.binomial(batch, workload_share))
    params = torch.cat([sample_params("workload", n_work, rng, h, w), sample_params("general", batch - n_work, rng, h, w)])
    return BatchPlan(portrait, h, w, indices, flips, params[torch.from_numpy(rng.permutation(batch))])


def synthesize(pool: torch.Tensor, plan: BatchPlan, with_targets: bool = False) -> Batch:
    """The planned pairs, made on the pool's device (a `pool_on_device` tensor)."""
    imgs = pool[plan.indices.to(pool.device)]
    if plan.portrait:
        imgs = torch.rot90(imgs, 1, dims=(2, 3))
    imgs = torch.where(plan.flips.to(pool.device).reshape(-1, 1, 1, 1), imgs.flip(3), imgs).float()
    if imgs.shape[-2:] != (plan.height, plan.width):
        imgs = torch.nn.functional.interpolate(imgs, size=(plan.height, plan.width), mode="bilinear", antialias=True, align_corners=False)
    params = plan.params.to(pool.device)
    distorted, targets = make_pairs(imgs, params, with_targets)
    return Batch(distorted, torch.full((len(params),), plan.height / plan.width, device=pool.device), params, targets)


def draw_batch(pool: list[np.ndarray] | torch.Tensor, batch: int, rng: np.random.Generator, workload_share: float,
               with_targets: bool = False, device: str | torch.device = "cpu") -> Batch:
    """One batch with a single aspect ratio; regimes mixed by ``workload_share``. The pairs
    are synthesised on ``device``; a tensor ``pool`` (`pool_on_device`) is sampled there too,
    with the same draws as a list pool."""
    if isinstance(pool, torch.Tensor):
        return synthesize(pool, plan_batch(pool.shape[0], tuple(pool.shape[-2:]), batch, rng, workload_share), with_targets)
    plan = plan_batch(len(pool), pool[0].shape[:2], batch, rng, workload_share)
    srcs = []
    for idx, flip in zip(plan.indices.tolist(), plan.flips.tolist()):
        img = np.ascontiguousarray(np.rot90(pool[idx])) if plan.portrait else pool[idx]
        srcs.append(cv2.resize(img[:, ::-1] if flip else img, (plan.width, plan.height), interpolation=cv2.INTER_AREA))
    sources = torch.from_numpy(np.stack(srcs)).to(device).permute(0, 3, 1, 2).float()
    params = plan.params.to(device)
    distorted, targets = make_pairs(sources, params, with_targets)
    return Batch(distorted, torch.full((batch,), plan.height / plan.width, device=device), params, targets)


@dataclass
class Sample:
    sample_id: str
    original: np.ndarray  # (H, W, 3) uint8 RGB, distorted
    target: np.ndarray | None  # corrected target, if any
    params: torch.Tensor  # (1, 8) label
    source: str = "pair"  # what was distorted: "scene" (procedural), "photo <file>", or a real "pair"


def synthetic_samples(regime: str, count: int, seed: int = 0, width: int = 2048, height: int = 1366) -> Iterator[Sample]:
    """Held-out synthetic pairs at full resolution: validation scenes (seeds disjoint from
    training) and the held-out photo, distorted with ``regime`` parameters."""
    rng = np.random.default_rng(seed + 7919)
    photos = [load_photo(n) for n in VAL_PHOTOS]
    params = sample_params(regime, count, rng, height, width)
    for i in range(count):
        if photos and i % 8 == 7:
            src = cv2.resize(photos[(i // 8) % len(photos)], (width, height), interpolation=cv2.INTER_CUBIC)
            source = f"photo {VAL_PHOTOS[(i // 8) % len(photos)]}"
        else:
            src = render_scene(VAL_SEED_BASE + 5_000_000 + seed * 10_007 + i, height, width)
            source = "scene"
        t = torch.from_numpy(src).permute(2, 0, 1)[None].float()
        distorted, target = make_pairs(t, params[i : i + 1])
        to_u8 = lambda x: x[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()  # noqa: E731
        yield Sample(f"{regime}-{i:04d}", to_u8(distorted), to_u8(target), params[i : i + 1], source)
