"""Losses that supervise the warp itself.

The primary loss is the endpoint error (EPE) between the predicted and the true sampling grid,
in pixels of a reference full resolution (the workload's 2048 px width): regressing raw
coefficients with MSE lets errors in k1, k2 and the focal length trade off against each other
invisibly and collapses to the mean; the grid is what the user sees.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lens.geometry import optimal_new_camera, parametric_points

REFERENCE_WIDTH = 2048
# Grid points where the EPE is evaluated: dense enough for smooth warps, cheap enough for a CPU.
EPE_ROWS, EPE_COLS = 17, 25


def epe_points(height: int, width: int, rows: int = EPE_ROWS, cols: int = EPE_COLS, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1, rows, cols)`` pixel coordinates of an evenly spaced lattice, corners included."""
    u = torch.linspace(0, width - 1, cols, device=device).reshape(1, 1, -1).expand(1, rows, cols)
    v = torch.linspace(0, height - 1, rows, device=device).reshape(1, -1, 1).expand(1, rows, cols)
    return u, v


def warp_points(params: torch.Tensor, height: int, width: int, flow: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, rows, cols, 2)`` normalised sampling positions of the alpha = 0 correction at the
    EPE lattice, with the residual ``flow`` (`lens.geometry.fuse_residual` units) if given."""
    u, v = epe_points(height, width, device=params.device)
    camera = optimal_new_camera(params, height, width, implicit_grad=True)  # exact where Newton converged (in the regimes)
    pts = parametric_points(params, camera, u, v, height, width)
    if flow is not None:
        sx, sy = 2.0 / (flow.shape[-1] - 1), 2.0 / (flow.shape[-2] - 1)
        norm_flow = torch.cat([flow[:, :1] * sx, flow[:, 1:] * sy], dim=1)
        lattice = torch.stack([u * (2.0 / (width - 1)) - 1, v * (2.0 / (height - 1)) - 1], dim=-1).expand(flow.shape[0], -1, -1, -1)
        pts = pts + F.grid_sample(norm_flow, lattice, mode="bilinear", align_corners=True).permute(0, 2, 3, 1)
    return pts


def endpoint_error(pred: torch.Tensor, true: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(B,)`` mean distance in pixels between two ``(B, ..., 2)`` normalised point sets."""
    dx = (pred[..., 0] - true[..., 0]) * ((width - 1) / 2)
    dy = (pred[..., 1] - true[..., 1]) * ((height - 1) / 2)
    return torch.sqrt(dx * dx + dy * dy + 1e-12).flatten(1).mean(dim=1)


def reference_size(aspect: float | torch.Tensor) -> tuple[int, int]:
    """(height, width) of the reference resolution for an aspect ratio H / W (a tensor: its
    mean)."""
    value = float(aspect.mean()) if isinstance(aspect, torch.Tensor) else float(aspect)
    return int(round(REFERENCE_WIDTH * value)), REFERENCE_WIDTH


def smoothness(flow: torch.Tensor) -> torch.Tensor:
    """Mean squared second difference of the residual flow: penalises wiggles, not offsets."""
    dxx = flow[..., :, 2:] - 2 * flow[..., :, 1:-1] + flow[..., :, :-2]
    dyy = flow[..., 2:, :] - 2 * flow[..., 1:-1, :] + flow[..., :-2, :]
    return dxx.pow(2).mean() + dyy.pow(2).mean()


def foldover_penalty(points: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Hinge on the Jacobian determinant of a lattice warp: zero while the warp keeps local
    orientation with margin (det >= 0.5 of the identity's), growing as it nears a fold."""
    px = (points[..., 0] + 1) * ((width - 1) / 2)
    py = (points[..., 1] + 1) * ((height - 1) / 2)
    du = (width - 1) / (points.shape[2] - 1)
    dv = (height - 1) / (points.shape[1] - 1)
    a = (px[:, :-1, 1:] - px[:, :-1, :-1]) / du
    b = (px[:, 1:, :-1] - px[:, :-1, :-1]) / dv
    c = (py[:, :-1, 1:] - py[:, :-1, :-1]) / du
    d = (py[:, 1:, :-1] - py[:, :-1, :-1]) / dv
    return F.relu(0.5 - (a * d - b * c)).mean()
