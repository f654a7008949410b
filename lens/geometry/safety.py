"""Safety statistics of a fused sampling grid.

These are what the runtime's fallback logic reads to decide whether a predicted warp may ship.
All are ``(B,)`` tensors, computed branch-free so they can be graph outputs; `SAFETY_STATS`
fixes their order when they are stacked into one ``(B, K)`` tensor.
"""
from __future__ import annotations

import torch

from lens.conventions import SAFETY_STATS  # torch-free, shared with the runtime
from lens.geometry.grid import normalized_to_pixel

#: A sample may sit this many pixels beyond the outermost pixel centre before it counts as
#: out of bounds: float32 round-off of an exact alpha = 0 border is ~1e-4 px.
OOB_TOLERANCE_PX = 0.01


def jacobian_determinant(grid: torch.Tensor, stride: int = 1, image_size=None) -> torch.Tensor:
    """``(B, H', W')`` determinant of d(input px)/d(output px) by forward differences over
    every ``stride``-th point; 1 for the identity, <= 0 where the warp folds over.

    ``image_size=(H, W)``: ``grid`` is a lattice spanning an ``H x W`` image evenly (first
    and last points on the border pixels), as `lattice_points` makes; else it is the full grid.
    """
    rows, cols = grid.shape[1], grid.shape[2]
    height, width = image_size if image_size is not None else (rows, cols)
    g = grid[:, ::stride, ::stride]
    px = normalized_to_pixel(g[..., 0], width)
    py = normalized_to_pixel(g[..., 1], height)
    du = stride * (width - 1) / (cols - 1)  # output pixels between neighbouring points
    dv = stride * (height - 1) / (rows - 1)
    dxu = (px[:, :-1, 1:] - px[:, :-1, :-1]) / du
    dyu = (py[:, :-1, 1:] - py[:, :-1, :-1]) / du
    dxv = (px[:, 1:, :-1] - px[:, :-1, :-1]) / dv
    dyv = (py[:, 1:, :-1] - py[:, :-1, :-1]) / dv
    return dxu * dyv - dxv * dyu


def _out_of_bounds(grid: torch.Tensor, height, width) -> torch.Tensor:
    px = normalized_to_pixel(grid[..., 0], width)
    py = normalized_to_pixel(grid[..., 1], height)
    tol = OOB_TOLERANCE_PX
    return (px < -tol) | (px > (width - 1) + tol) | (py < -tol) | (py > (height - 1) + tol)


def grid_safety_stats(
    grid: torch.Tensor, flow: torch.Tensor | None = None, jacobian_stride: int = 1, image_size=None
) -> dict[str, torch.Tensor]:
    """Safety statistics (`SAFETY_STATS`) of a ``(B, H, W, 2)`` grid.

    Args:
        grid: fused normalised backward grid, or a lattice of it (see ``image_size``).
        flow: the ``(B, 2, h, w)`` residual flow in its own pixels, if any, for the residual
            magnitudes (reported in full-resolution pixels); zeros without one.
        jacobian_stride: evaluate the Jacobian on every n-th point. A residual predicted at
            1/8 resolution cannot fold at a finer scale than its own spacing, so a stride up to
            that spacing sees every fold-over at a fraction of the cost.
        image_size: ``(H, W)`` when ``grid`` is an evenly spaced lattice over an image of that
            size (fractions are then estimated on the lattice points).
    """
    height, width = image_size if image_size is not None else (grid.shape[1], grid.shape[2])
    oob = _out_of_bounds(grid, height, width).to(grid.dtype)
    border = torch.cat([oob[:, 0, :], oob[:, -1, :], oob[:, 1:-1, 0], oob[:, 1:-1, -1]], dim=1)
    det = jacobian_determinant(grid, jacobian_stride, image_size).flatten(1)
    k = det.shape[1] // 100 + 1
    lowest = torch.topk(det, k, dim=1, largest=False).values
    if flow is None:
        residual = torch.zeros_like(det[:, :1])
    else:
        h, w = flow.shape[-2], flow.shape[-1]
        rx = flow[:, 0] * ((width - 1) / (w - 1))
        ry = flow[:, 1] * ((height - 1) / (h - 1))
        residual = torch.sqrt(rx * rx + ry * ry).flatten(1)
    return {
        "oob_fraction": oob.flatten(1).mean(dim=1),
        "border_invalid_fraction": border.mean(dim=1),
        "jacobian_min": lowest[:, 0],
        "jacobian_p01": lowest[:, -1],
        "foldover_fraction": (det <= 0).to(grid.dtype).mean(dim=1),
        "residual_mean_px": residual.mean(dim=1),
        "residual_max_px": residual.amax(dim=1),
    }


def stack_stats(stats: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(B, K)`` tensor of `grid_safety_stats` in `SAFETY_STATS` order."""
    return torch.stack([stats[name] for name in SAFETY_STATS], dim=1)
