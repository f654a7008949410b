"""Backward sampling grids and residual fusion.

A grid is ``(B, H, W, 2)``, last axis ``(x, y)``, in ``grid_sample`` normalised coordinates
with ``align_corners=True``: pixel centre ``i`` of an axis of length ``N`` is
``-1 + 2 i / (N - 1)``. For each output (corrected) pixel it says where to sample the input
(backward warp). Sizes come from arguments that may be symbolic (taken from a tensor's shape),
and ``arange(N) * (2 / (N - 1)) - 1`` is used instead of ``linspace`` so that exported graphs
keep ``H`` and ``W`` dynamic.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lens.geometry.camera import distort, intrinsics_px, undistort_points


def pixel_to_normalized(p: torch.Tensor, size) -> torch.Tensor:
    """Pixel coordinate along an axis of length ``size`` -> ``[-1, 1]`` (align_corners=True)."""
    return p * (2.0 / (size - 1)) - 1.0


def normalized_to_pixel(g: torch.Tensor, size) -> torch.Tensor:
    """Inverse of `pixel_to_normalized`."""
    return (g + 1.0) * ((size - 1) * 0.5)


def identity_grid(batch: int, height, width, dtype=torch.float32, device=None) -> torch.Tensor:
    """``(B, H, W, 2)`` grid that samples every pixel at its own centre."""
    gx = pixel_to_normalized(torch.arange(width, dtype=dtype, device=device), width)
    gy = pixel_to_normalized(torch.arange(height, dtype=dtype, device=device), height)
    grid = torch.stack(torch.broadcast_tensors(gx.unsqueeze(0), gy.unsqueeze(1)), dim=-1)
    return grid.unsqueeze(0).expand(batch, -1, -1, -1)


def parametric_points(params: torch.Tensor, new_camera: torch.Tensor, u: torch.Tensor, v: torch.Tensor, height, width) -> torch.Tensor:
    """Normalised sampling positions ``(B, *S, 2)`` of output pixels ``(u, v)`` (``(B, *S)`` or
    broadcastable pixel coordinates) for an undistortion; see `parametric_grid`."""
    cam = new_camera.reshape((-1, 4) + (1,) * (u.dim() - 1))
    x = (u - cam[:, 2]) / cam[:, 0]
    y = (v - cam[:, 3]) / cam[:, 1]
    x, y = torch.broadcast_tensors(x, y)
    xd, yd = distort(x, y, params)
    intr = intrinsics_px(params, height, width).reshape((-1, 3) + (1,) * (u.dim() - 1))
    px = intr[:, 0] * xd + intr[:, 1]
    py = intr[:, 0] * yd + intr[:, 2]
    return torch.stack([pixel_to_normalized(px, width), pixel_to_normalized(py, height)], dim=-1)


def lattice_points(height, width, step: int, dtype=torch.float32, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates ``(1, 1, cols)`` and ``(1, rows, 1)`` of an evenly spaced lattice over an
    ``H x W`` image, about ``step`` pixels apart, with its first and last points on the border
    pixels: upsampling a grid sampled there with ``align_corners=True`` interpolation recovers
    the full grid (to ~0.05 px for 8-px steps, `lens.training.synth`)."""
    cols = (width - 1 + step - 1) // step + 1
    rows = (height - 1 + step - 1) // step + 1
    u = torch.arange(cols, dtype=dtype, device=device) * ((width - 1) / (cols - 1))
    v = torch.arange(rows, dtype=dtype, device=device) * ((height - 1) / (rows - 1))
    return u.reshape(1, 1, -1), v.reshape(1, -1, 1)


def upsample_lattice(points: torch.Tensor, height, width) -> torch.Tensor:
    """``(B, rows, cols, 2)`` lattice grid -> ``(B, H, W, 2)`` full grid, bilinear."""
    return F.interpolate(points.permute(0, 3, 1, 2), size=(height, width), mode="bilinear", align_corners=True).permute(0, 2, 3, 1)


def parametric_grid(params: torch.Tensor, new_camera: torch.Tensor, height, width) -> torch.Tensor:
    """``(B, H, W, 2)`` backward grid of an undistortion.

    Args:
        params: ``(B, 8)`` lens parameters of the input image (`lens.geometry.params`).
        new_camera: ``(B, 4)`` output camera ``(fx, fy, cx, cy)`` in pixels
            (`optimal_new_camera` or `zoom_camera`).
        height, width: image size in pixels (input and output are the same size).

    Output pixel ``(u, v)`` -> ideal ray ``((u - cx') / fx', (v - cy') / fy')`` -> distorted by
    the lens -> input pixel ``f * xd + cx`` -> normalised. Identical to
    ``cv2.initUndistortRectifyMap(K, D, None, newK, (W, H))``.
    """
    u = torch.arange(width, dtype=params.dtype, device=params.device).reshape(1, 1, -1)
    v = torch.arange(height, dtype=params.dtype, device=params.device).reshape(1, -1, 1)
    return parametric_points(params, new_camera, u, v, height, width)


def residual_to_normalized(flow: torch.Tensor) -> torch.Tensor:
    """``(B, 2, h, w)`` flow in its own low-resolution pixels -> normalised offsets (same shape)."""
    h, w = flow.shape[-2], flow.shape[-1]
    return torch.cat([flow[:, :1] * (2.0 / (w - 1)), flow[:, 1:] * (2.0 / (h - 1))], dim=1)


def fuse_residual(grid: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Add a low-resolution residual flow to a full-resolution grid.

    Args:
        grid: ``(B, H, W, 2)`` normalised backward grid.
        flow: ``(B, 2, h, w)`` sampling offsets ``(dx, dy)`` in pixels of the ``h x w`` flow
            field itself (h, w >= 2), so that a flow predicted at 1/8 resolution means the same
            thing whatever the full resolution is.

    The offsets are converted to normalised units, upsampled bilinearly with
    ``align_corners=True`` (so the flow's corner samples sit on the image's corner pixels) and
    added: one fused grid, one sampling pass.
    """
    height, width = grid.shape[1], grid.shape[2]
    delta = F.interpolate(residual_to_normalized(flow), size=(height, width), mode="bilinear", align_corners=True)
    return grid + delta.permute(0, 2, 3, 1)


def sample(image: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Warp ``(B, C, H, W)`` float images with a backward grid (bilinear, zeros outside)."""
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def distortion_points(params: torch.Tensor, new_camera: torch.Tensor, u: torch.Tensor, v: torch.Tensor, height, width) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised positions ``(B, *S, 2)`` in the corrected image of distorted-image pixels
    ``(u, v)``, and a validity mask; see `distortion_grid`."""
    shape = (-1,) + (1,) * (u.dim() - 1)
    intr = intrinsics_px(params, height, width)
    f, cx, cy = intr[:, 0].reshape(shape), intr[:, 1].reshape(shape), intr[:, 2].reshape(shape)
    xd, yd = torch.broadcast_tensors((u - cx) / f, (v - cy) / f)
    x, y, valid = undistort_points(xd, yd, params)
    cam = new_camera.reshape((-1, 4) + (1,) * (u.dim() - 1))
    px = cam[:, 0] * x + cam[:, 2]
    py = cam[:, 1] * y + cam[:, 3]
    return torch.stack([pixel_to_normalized(px, width), pixel_to_normalized(py, height)], dim=-1), valid


def distortion_grid(params: torch.Tensor, new_camera: torch.Tensor, height, width) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse warp of `parametric_grid`: where each pixel of the *distorted* image lies
    in the corrected image. Sampling a corrected (ideal) photo with it synthesises what the
    lens would have recorded.

    Returns the ``(B, H, W, 2)`` grid and a ``(B, H, W)`` boolean mask that is False where the
    lens model has no inverse (beyond its monotonic radius, `monotonic_radius`).
    """
    u = torch.arange(width, dtype=params.dtype, device=params.device).reshape(1, 1, -1)
    v = torch.arange(height, dtype=params.dtype, device=params.device).reshape(1, -1, 1)
    return distortion_points(params, new_camera, u, v, height, width)
