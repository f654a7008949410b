"""Brown-Conrady distortion, its inverse, and the output ("new") camera.

Conventions (OpenCV's, see `lens.geometry.params`): points are normalised camera
coordinates ``x = (u - cx_px) / f_px``; *distort* maps an ideal (undistorted) point to where
the lens images it, exactly as ``cv2.projectPoints`` does; *undistort_points* inverts that.

Shapes: ``params`` is ``(B, 8)``; point tensors are ``(B, *S)`` for any ``S`` and the
coefficients broadcast over ``S``. Everything is branch-free tensor code so that it can live
inside an exported ONNX graph; sizes (``H``, ``W``) may be ints or symbolic sizes taken from a
tensor's shape.
"""
from __future__ import annotations

import torch

# Radius range searched for the end of the monotonic part of the radial map. Image corners
# sit below r = 1.8 for every focal length the bounds allow (focal >= 0.4 image widths).
_R_SEARCH_MAX = 4.0
_R_SEARCH_STEPS = 2049
_NEWTON_STEPS = 8  # measured: converged to 1e-12 px for every invertible parameter set in bounds
# OpenCV samples a 9 x 9 grid for getOptimalNewCameraMatrix; 257 points per edge contain its
# border points (256 = 32 * 8) and also catch extremes that fall between them when the
# principal point is offset, so alpha = 0 really leaves no black border.
_BORDER_SAMPLES = 257


def _coeff(params: torch.Tensor, index: int, like: torch.Tensor) -> torch.Tensor:
    """Column ``index`` of ``params`` shaped ``(B, 1, ..., 1)`` to broadcast over ``like``."""
    return params[:, index].reshape((-1,) + (1,) * (like.dim() - 1))


def intrinsics_px(params: torch.Tensor, height, width) -> torch.Tensor:
    """``(B, 3)`` input-camera intrinsics in pixels: ``(f, cx, cy)``."""
    f = params[:, 5] * width
    cx = params[:, 6] * width + (width - 1) * 0.5
    cy = params[:, 7] * width + (height - 1) * 0.5
    return torch.stack([f, cx, cy], dim=1)


def distort(x: torch.Tensor, y: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward Brown-Conrady: ideal normalised ``(x, y)`` -> distorted normalised coordinates."""
    k1, k2, k3, p1, p2 = (_coeff(params, i, x) for i in range(5))
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return xd, yd


def _distort_jacobian(x, y, params):
    k1, k2, k3, p1, p2 = (_coeff(params, i, x) for i in range(5))
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    dradial = k1 + r2 * (2 * k2 + 3 * k3 * r2)  # d radial / d r2
    a = radial + 2 * x * x * dradial + 2 * p1 * y + 6 * p2 * x
    b = 2 * x * y * dradial + 2 * p1 * x + 2 * p2 * y
    d = radial + 2 * y * y * dradial + 6 * p1 * y + 2 * p2 * x
    return a, b, b, d  # d xd/dx, d xd/dy, d yd/dx, d yd/dy


def monotonic_radius(params: torch.Tensor) -> torch.Tensor:
    """``(B,)`` largest ideal radius up to which ``r -> r (1 + k1 r^2 + k2 r^4 + k3 r^6)`` is
    strictly increasing (capped at 4.0). Beyond it the lens model folds over and has no
    inverse: strong barrel distortion maps far-out points back towards the centre."""
    r = torch.arange(_R_SEARCH_STEPS, dtype=params.dtype, device=params.device) * (_R_SEARCH_MAX / (_R_SEARCH_STEPS - 1))
    r2 = (r * r).unsqueeze(0)
    k1, k2, k3 = (params[:, i : i + 1] for i in range(3))
    slope = 1 + r2 * (3 * k1 + r2 * (5 * k2 + r2 * 7 * k3))
    still_increasing = (torch.cumsum((slope <= 0).to(params.dtype), dim=1) == 0).to(params.dtype)
    return (r.unsqueeze(0) * still_increasing).amax(dim=1)


def undistort_points(
    xd: torch.Tensor, yd: torch.Tensor, params: torch.Tensor, implicit_grad: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of `distort`: distorted normalised coordinates -> ideal ones, by Newton's method.

    Iterates are kept inside the monotonic radius (`monotonic_radius`), where the map is
    invertible; a point the lens cannot produce (beyond the distorted image of that radius)
    converges to the radius limit. Returns ``(x, y, valid)`` where ``valid`` is a boolean
    tensor that is False for those points.

    ``implicit_grad``: gradients flow through the last Newton step only. Where the iteration
    has converged (parameters in the training regimes) that step's derivative is the
    implicit-function derivative and backward skips the other steps (half the kernels of a
    training step's loss); far from convergence (an optimiser's line search probing wild
    parameters) it is not the derivative of the computed value, so fitting keeps it off.
    Values are the same either way.
    """
    r_max = monotonic_radius(params).reshape((-1,) + (1,) * (xd.dim() - 1))
    x, y = xd, yd
    for i in range(_NEWTON_STEPS):
        if implicit_grad and i == _NEWTON_STEPS - 1:
            x, y = x.detach(), y.detach()
        fx, fy = distort(x, y, params)
        ex, ey = fx - xd, fy - yd
        a, b, c, d = _distort_jacobian(x, y, params)
        det = a * d - b * c
        det = torch.where(det.abs() < 1e-12, torch.full_like(det, 1e-12), det)
        x = x - (d * ex - b * ey) / det
        y = y - (a * ey - c * ex) / det
        radius = torch.sqrt(x * x + y * y)
        shrink = torch.clamp(r_max / torch.clamp(radius, min=1e-12), max=1.0)
        x, y = x * shrink, y * shrink
    fx, fy = distort(x, y, params)
    tol = 1e-6 * (1 + torch.sqrt(xd * xd + yd * yd))
    valid = (torch.abs(fx - xd) < tol) & (torch.abs(fy - yd) < tol)
    return x, y, valid


def optimal_new_camera(params: torch.Tensor, height, width, alpha: float = 0.0, implicit_grad: bool = False) -> torch.Tensor:
    """One camera of `optimal_new_cameras`."""
    return optimal_new_cameras(params, height, width, (alpha,), implicit_grad)[0]


def optimal_new_cameras(params: torch.Tensor, height, width, alphas: tuple[float, ...], implicit_grad: bool = False) -> list[torch.Tensor]:
    """For each alpha, the ``(B, 4)`` output camera ``(fx, fy, cx, cy)`` in pixels, as ``cv2.getOptimalNewCameraMatrix``.

    ``alpha = 0``: per axis, the widest view (smallest focal length) for which every output
    pixel still samples inside the input, i.e. no black border; ``alpha = 1``: every input
    pixel is kept. Like OpenCV, the two axes
    get their own scale, so strong barrel distortion is stretched a little anisotropically
    (measured: k1 = -0.2, k2 = 0.4 at 2048 x 1367 gives fx / fy = 0.999; the reference
    workload's targets follow this convention). The output size equals the input size.
    Several alphas share one undistortion of the border (training synthesis needs 0 and 1).
    ``implicit_grad``: see `undistort_points`.
    """
    n = _BORDER_SAMPLES
    steps = torch.arange(n, dtype=params.dtype, device=params.device) / (n - 1)
    zeros, ones = torch.zeros_like(steps), torch.ones_like(steps)
    # Rows: left, right, top and bottom edge of the input, in pixels. For a monotonic lens
    # map the extremes of the undistorted image lie on these edges.
    u = torch.stack([zeros, ones, steps, steps]) * (width - 1)
    v = torch.stack([steps, steps, zeros, ones]) * (height - 1)
    intr = intrinsics_px(params, height, width)
    f, cx, cy = intr[:, 0:1, None], intr[:, 1:2, None], intr[:, 2:3, None]
    x, y, _ = undistort_points((u.unsqueeze(0) - cx) / f, (v.unsqueeze(0) - cy) / f, params, implicit_grad)  # (B, 4, n)

    inner_x0, inner_x1 = x[:, 0].amax(dim=1), x[:, 1].amin(dim=1)
    inner_y0, inner_y1 = y[:, 2].amax(dim=1), y[:, 3].amin(dim=1)
    flat_x, flat_y = x.flatten(1), y.flatten(1)
    outer_x0, outer_x1 = flat_x.amin(dim=1), flat_x.amax(dim=1)
    outer_y0, outer_y1 = flat_y.amin(dim=1), flat_y.amax(dim=1)

    fx0 = (width - 1) / (inner_x1 - inner_x0)
    fy0 = (height - 1) / (inner_y1 - inner_y0)
    fx1 = (width - 1) / (outer_x1 - outer_x0)
    fy1 = (height - 1) / (outer_y1 - outer_y0)
    cameras = []
    for alpha in alphas:
        fx = fx0 * (1 - alpha) + fx1 * alpha
        fy = fy0 * (1 - alpha) + fy1 * alpha
        ncx = -(fx0 * inner_x0) * (1 - alpha) - (fx1 * outer_x0) * alpha
        ncy = -(fy0 * inner_y0) * (1 - alpha) - (fy1 * outer_y0) * alpha
        cameras.append(torch.stack([fx, fy, ncx, ncy], dim=1))
    return cameras


def zoom_camera(params: torch.Tensor, height, width, zoom: float | torch.Tensor) -> torch.Tensor:
    """``(B, 4)`` output camera = input camera with its focal length multiplied by ``zoom``
    (> 1 magnifies) and the same principal point."""
    intr = intrinsics_px(params, height, width)
    f = intr[:, 0] * zoom
    return torch.stack([f, f, intr[:, 1], intr[:, 2]], dim=1)
