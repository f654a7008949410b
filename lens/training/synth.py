"""Synthetic training pairs in exactly the workload's convention.

A pair is made from an ideal (undistorted) source photo and a parameter set:

- the *distorted input* sees the source through the lens: each input pixel is undistorted to
  its ideal ray and the ray is looked up in the source, framed with OpenCV's alpha = 1 camera
  so that every input pixel has content;
- the *corrected target* is the alpha = 0 undistortion of that input (DESIGN.md), rendered
  straight from the source: one resampling each, no double blur.

Regimes (seeded, `sample_params`):

- ``workload``: f = image width, centred, no tangential terms; k1 ~ U(-0.35, 0), k2 ~ U(0, 0.6).
- ``general``: pincushion too, focal 0.7..1.5 widths, centre offsets up to 3% of the width,
  small tangential and k3 terms.

Parameter sets whose image border the lens cannot produce (beyond the monotonic radius) are
redrawn, so every sample has a defined alpha = 0 target.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lens.conventions import REGIME_RANGES
from lens.geometry import (
    distortion_points,
    intrinsics_px,
    lattice_points,
    upsample_lattice,
    optimal_new_cameras,
    pixel_to_normalized,
    undistort_points,
)

REGIMES = tuple(REGIME_RANGES)

def border_is_invertible(params: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(B,)`` True where every point of the image border has an ideal ray under ``params``."""
    n = 33
    t = torch.linspace(0, 1, n, dtype=params.dtype)
    u = torch.cat([t * (width - 1), t * (width - 1), torch.zeros(n), torch.full((n,), width - 1.0)])
    v = torch.cat([torch.zeros(n), torch.full((n,), height - 1.0), t * (height - 1), t * (height - 1)])
    intr = intrinsics_px(params, height, width)
    xd = (u[None] - intr[:, 1:2]) / intr[:, 0:1]
    yd = (v[None] - intr[:, 2:3]) / intr[:, 0:1]
    return undistort_points(xd.to(params.dtype), yd.to(params.dtype), params)[2].all(dim=1)


def sample_params(regime: str, count: int, rng: np.random.Generator, height: int = 1367, width: int = 2048) -> torch.Tensor:
    """``(count, 8)`` float32 parameter sets of ``regime``, all with an invertible border."""
    if regime not in REGIME_RANGES:
        raise ValueError(f"unknown regime {regime!r}; choose from {REGIMES}")
    lo, hi = np.array(REGIME_RANGES[regime]).T
    out: list[torch.Tensor] = [torch.zeros(0, len(lo), dtype=torch.float64)]
    while sum(len(o) for o in out) < count:
        draw = torch.from_numpy(rng.uniform(lo, hi, size=(count, len(lo)))).double()
        out.append(draw[border_is_invertible(draw, height, width)])
    return torch.cat(out)[:count].float()


@dataclass
class PairGrids:
    """Backward grids into the source photo, ``(B, H, W, 2)`` each."""

    distorted: torch.Tensor  # for the distorted input
    target: torch.Tensor  # for the alpha = 0 corrected target


# The synthesis maps are smooth: evaluated every 8 pixels and upsampled bilinearly they stay
# within 0.05 px of the exact map (tests/test_training.py) at 1/100 of the cost.
LATTICE_STEP = 8


def pair_grids(params: torch.Tensor, height: int, width: int, with_target: bool = True) -> PairGrids:
    """Grids that render the distorted input and its corrected target from ideal sources of
    size ``height x width`` (both images have that size too). Runs on ``params``' device."""
    p = params.float()
    # source_cam (alpha = 1): the source spans every input ray; tc (alpha = 0): the target.
    source_cam, tc = optimal_new_cameras(p, height, width, (1.0, 0.0))
    u, v = lattice_points(height, width, LATTICE_STEP, p.dtype, p.device)
    distorted = upsample_lattice(distortion_points(p, source_cam, u, v, height, width)[0], height, width)
    target = None
    if with_target:
        # The target's ideal rays, looked up in the source: a pure scale and shift.
        ratio_x, ratio_y = source_cam[:, 0] / tc[:, 0], source_cam[:, 1] / tc[:, 1]
        uu = torch.arange(width, dtype=p.dtype, device=p.device)
        vv = torch.arange(height, dtype=p.dtype, device=p.device)
        px = (uu[None] - tc[:, 2:3]) * ratio_x[:, None] + source_cam[:, 2:3]
        py = (vv[None] - tc[:, 3:4]) * ratio_y[:, None] + source_cam[:, 3:4]
        gx = pixel_to_normalized(px, width)[:, None, :].expand(-1, height, -1)
        gy = pixel_to_normalized(py, height)[:, :, None].expand(-1, -1, width)
        target = torch.stack([gx, gy], dim=-1)
    return PairGrids(distorted, target)


def make_pairs(sources: torch.Tensor, params: torch.Tensor, with_target: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Distorted inputs and corrected targets from ``(B, 3, H, W)`` float sources in [0, 255]."""
    height, width = sources.shape[-2:]
    grids = pair_grids(params.to(sources.device), height, width, with_target)
    sample = lambda g: F.grid_sample(sources, g, mode="bilinear", padding_mode="border", align_corners=True)  # noqa: E731
    return sample(grids.distorted), (sample(grids.target) if with_target else None)
