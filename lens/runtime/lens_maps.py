"""The correction of one parameter set in numpy and OpenCV, for the torch-free runtime.

The exported graph computes the warp of the parameters it predicts. When the runtime changes
those parameters (`lens.runtime.plumb_line` refits them to the photo's straight lines) it
needs the same warp without torch: the lens model inverted by Newton's method, the alpha = 0
output camera of `lens.geometry.optimal_new_cameras` (same border sampling), and the remap
maps (`correction_maps`). tests/test_plumb_line.py holds all three to the torch geometry, and
the maps to ``cv2.initUndistortRectifyMap``, which uses the very camera convention of
`lens.geometry`.
"""
from __future__ import annotations

import cv2
import numpy as np

from lens.conventions import SAFETY_STATS

_BORDER_SAMPLES = 257  # as lens.geometry.camera
_OOB_TOLERANCE_PX = 0.01  # as lens.geometry.safety


def camera_px(params: np.ndarray, height: int, width: int) -> tuple[float, float, float]:
    """Input camera ``(f, cx, cy)`` in pixels (`lens.geometry.params`)."""
    return params[5] * width, (width - 1) / 2 + params[6] * width, (height - 1) / 2 + params[7] * width


def undistort_normalised(points: np.ndarray, params: np.ndarray, height: int, width: int,
                         start: np.ndarray | None = None, iterations: int = 8, tolerance: float = 0.0):
    """Distorted input pixels ``(N, 2)`` -> ideal normalised ``x, y`` by Newton's method on
    the Brown-Conrady model, and the model's Jacobian ``(jxx, jxy, jyy)`` (symmetric) there.
    ``start``: ideal pixels for nearby parameters, from which a few iterations do. Stops
    early once no point moves by more than ``tolerance`` (normalised units)."""
    k1, k2, k3, p1, p2 = params[:5]
    f, cx, cy = camera_px(params, height, width)
    xd, yd = (points[:, 0] - cx) / f, (points[:, 1] - cy) / f
    x, y = (xd.copy(), yd.copy()) if start is None else ((start[:, 0] - cx) / f, (start[:, 1] - cy) / f)
    if k3 == 0 and p1 == 0 and p2 == 0:
        return _undistort_radial(xd, yd, k1, k2, None if start is None else (x, y), iterations, tolerance)
    for i in range(iterations + 1):
        r2 = x * x + y * y
        radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
        slope = 2 * (k1 + r2 * (2 * k2 + 3 * k3 * r2))  # d radial / d r2, times 2
        jxx = radial + x * x * slope + 2 * p1 * y + 6 * p2 * x
        jxy = x * y * slope + 2 * p1 * x + 2 * p2 * y
        jyy = radial + y * y * slope + 6 * p1 * y + 2 * p2 * x
        if i == iterations:
            return x, y, (jxx, jxy, jyy)
        ex = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x) - xd
        ey = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y - yd
        det = jxx * jyy - jxy * jxy
        det = np.where(np.abs(det) < 1e-9, 1e-9, det)
        step_x, step_y = (jyy * ex - jxy * ey) / det, (jxx * ey - jxy * ex) / det
        x, y = x - step_x, y - step_y
        if tolerance and max(np.abs(step_x).max(), np.abs(step_y).max()) < tolerance:
            iterations = i + 1  # one more pass for the Jacobian at the converged point


def _undistort_radial(xd, yd, k1, k2, start, iterations, tolerance):
    """`undistort_normalised` for the workload's radial lens (k3 = p1 = p2 = 0), whose ideal
    point lies on the distorted point's ray from the centre: Newton's method on the radius
    alone, the same iterates as the two-dimensional one along that ray at half the work (the
    line fit calls this hundreds of times per photo)."""
    rho_d = np.sqrt(xd * xd + yd * yd)
    rho = rho_d if start is None else np.sqrt(start[0] * start[0] + start[1] * start[1])
    for _ in range(iterations):
        r2 = rho * rho
        slope = 1 + r2 * (3 * k1 + 5 * k2 * r2)  # d distorted radius / d radius
        step = (rho * (1 + r2 * (k1 + r2 * k2)) - rho_d) / np.where(np.abs(slope) < 1e-9, 1e-9, slope)
        rho = rho - step
        if tolerance and np.abs(step).max() < tolerance:
            break
    scale = rho / np.where(rho_d > 0, rho_d, 1.0)
    x, y = xd * scale, yd * scale
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * k2)
    slope = 2 * (k1 + r2 * (2 * k2))
    return x, y, (radial + x * x * slope, x * y * slope, radial + y * y * slope)


def undistort_px(points: np.ndarray, params: np.ndarray, height: int, width: int,
                 start: np.ndarray | None = None, iterations: int = 8, tolerance: float = 0.0) -> np.ndarray:
    """``(N, 2)`` distorted input pixels -> ideal pixels of the input camera."""
    f, cx, cy = camera_px(params, height, width)
    x, y, _ = undistort_normalised(points, params, height, width, start, iterations, tolerance)
    return np.stack([x * f + cx, y * f + cy], axis=1)


def alpha0_camera(params: np.ndarray, height: int, width: int) -> tuple[float, float, float, float]:
    """Output camera ``(fx, fy, cx, cy)`` in pixels with no black border: per axis, the widest
    view whose every pixel samples inside the input (`lens.geometry.optimal_new_cameras`)."""
    t = np.linspace(0.0, 1.0, _BORDER_SAMPLES)
    zeros, ones = np.zeros_like(t), np.ones_like(t)
    u = np.concatenate([zeros, ones, t, t]) * (width - 1)  # left, right, top, bottom edges
    v = np.concatenate([t, t, zeros, ones]) * (height - 1)
    x, y, _ = undistort_normalised(np.stack([u, v], axis=1), np.asarray(params, np.float64), height, width)
    x, y = x.reshape(4, -1), y.reshape(4, -1)
    x0, x1 = x[0].max(), x[1].min()
    y0, y1 = y[2].max(), y[3].min()
    fx, fy = (width - 1) / (x1 - x0), (height - 1) / (y1 - y0)
    return fx, fy, -fx * x0, -fy * y0


def _source_pixels(params: np.ndarray, u: np.ndarray, v: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Input pixels sampled by output pixels ``(u, v)`` of the alpha = 0 correction."""
    f, cx, cy = camera_px(params, height, width)
    fx, fy, ncx, ncy = alpha0_camera(params, height, width)
    x, y = np.broadcast_arrays((u - ncx) / fx, (v - ncy) / fy)
    k1, k2, k3, p1, p2 = params[:5]
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    px = f * (x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)) + cx
    py = f * (y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y) + cy
    return px, py


MAP_STEP = 8  # output pixels between the exactly computed points of `correction_maps` and the CPU graph's lattice


def map_lattice_size(height: int, width: int, step: int = MAP_STEP) -> tuple[int, int]:
    """``(rows, cols)`` of the lattice that `maps_from_lattice` upsamples: points at the centres
    of ``step``-pixel blocks, with one more beyond each border (`map_lattice_pixels`). Plain
    integer arithmetic, so the CPU graph (`lens.export.graph.LensMapsGraph`) computes the same
    sizes from its symbolic height and width (non-negative operands only: ONNX's integer Div
    truncates, Python's floors)."""
    return (height + step // 2 + step - 1) // step + 1, (width + step // 2 + step - 1) // step + 1


def map_lattice_pixels(count: int, step: int = MAP_STEP):
    """Output-pixel coordinates of ``count`` lattice points along an axis: ``step i - (step + 1) / 2``,
    where ``cv2.resize``'s half-pixel convention samples them when `maps_from_lattice` enlarges
    the lattice ``step`` times and crops ``step`` pixels off its start."""
    return np.arange(count, dtype=np.float64) * step - (step + 1) / 2


def maps_from_lattice(lattice_x: np.ndarray, lattice_y: np.ndarray, height: int, width: int, step: int = MAP_STEP) -> tuple[np.ndarray, np.ndarray]:
    """Float pixel maps ``(H, W)`` for ``cv2.remap`` from their values at the `map_lattice_size`
    points, bilinearly (``cv2.resize`` with float weights: no fixed-point rounding)."""
    rows, cols = lattice_x.shape
    return tuple(cv2.resize(np.asarray(m, np.float32), (cols * step, rows * step), interpolation=cv2.INTER_LINEAR)[step : step + height, step : step + width]
                 for m in (lattice_x, lattice_y))


def correction_maps(params: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Float pixel maps ``(H, W)`` of the alpha = 0 correction for ``cv2.remap``.

    Computed exactly on a lattice every `MAP_STEP` pixels and upsampled bilinearly
    (`maps_from_lattice`), as the runtime does with the CPU graph's fused grid: ~12 ms at
    2048 x 1367 on one core against ~19 ms for ``cv2.initUndistortRectifyMap`` on every pixel.
    A lens map bends little over 8 pixels: within 0.007 px of the exact maps for the workload's
    lenses at 2048 px, and 0.07 px for the strongest plausible lenses
    (`lens.runtime.plumb_line.PLAUSIBLE_BOUNDS`) at 1024 px, below which every pixel is
    computed."""
    p = np.asarray(params, np.float64)
    if min(height, width) < 1024:  # every pixel exactly: the lattice would be too coarse (error grows as 1 / size)
        u, v = np.arange(width, dtype=np.float64)[None, :], np.arange(height, dtype=np.float64)[:, None]
        return tuple(m.astype(np.float32) for m in _source_pixels(p, u, v, height, width))
    rows, cols = map_lattice_size(height, width)
    return maps_from_lattice(*_source_pixels(p, map_lattice_pixels(cols)[None, :], map_lattice_pixels(rows)[:, None], height, width), height, width)


def lattice_safety(params: np.ndarray, height: int, width: int, step: int = 16) -> dict[str, float]:
    """`SAFETY_STATS` of the parametric correction, on a lattice every ``step`` output pixels
    (no residual: its two entries are 0), for `lens.runtime.policy.violations`."""
    p = np.asarray(params, np.float64)
    cols, rows = (width - 1 + step - 1) // step + 1, (height - 1 + step - 1) // step + 1
    u = np.linspace(0, width - 1, cols)[None, :]
    v = np.linspace(0, height - 1, rows)[:, None]
    px, py = _source_pixels(p, u, v, height, width)
    tol = _OOB_TOLERANCE_PX
    oob = (px < -tol) | (px > width - 1 + tol) | (py < -tol) | (py > height - 1 + tol)
    ring = np.concatenate([oob[0], oob[-1], oob[1:-1, 0], oob[1:-1, -1]])
    du, dv = (width - 1) / (cols - 1), (height - 1) / (rows - 1)
    det = ((px[:-1, 1:] - px[:-1, :-1]) / du) * ((py[1:, :-1] - py[:-1, :-1]) / dv) - \
        ((px[1:, :-1] - px[:-1, :-1]) / dv) * ((py[:-1, 1:] - py[:-1, :-1]) / du)
    stats = {
        "oob_fraction": float(oob.mean()), "border_invalid_fraction": float(ring.mean()),
        "jacobian_min": float(det.min()), "jacobian_p01": float(np.percentile(det, 1)),
        "foldover_fraction": float((det <= 0).mean()), "residual_mean_px": 0.0, "residual_max_px": 0.0,
    }
    return {k: stats[k] for k in SAFETY_STATS}
