"""Pseudo-labels: fit the parametric warp that maps a real pair's input onto its target.

The workload ships no per-pair parameters, yet geometric supervision is what trains a model
that corrects. For each pair we fit ``k1, k2``, a small principal-point offset and a zoom
(relative to the alpha = 0 framing) by coarse-to-fine photometric registration:

1. at 128 px wide, a grid search over k1 (the dominant term; avoids local minima);
2. L-BFGS on all five unknowns at 128, 256, 512 and 1024 px wide, each level starting from
   the last (five smooth unknowns: a quasi-Newton method converges in tens of evaluations),
   moving them as displacements in pixels (`_fit_variables`): on 24 seeded workload-like
   lenses (`tools/pseudo_label_accuracy.py --pairs 24 --seed 2`) the EPE at 2048 px went from
   a mean of 89.7 px (6 fits over 0.3 px, one run off to k1 = -1.8 and beyond) to 0.016 px
   (at most 0.044).
3. Most steps at the finest level (`STEPS_PER_LEVEL`). A coarse level's optimum is off the
   true lens (a warp's magnification blurs the source after the area-averaging, the target
   before it), and a fit that settles there slides only slowly back along the valley of a
   centre offset traded against k1 and k2: with (40, 30, 20, 10) steps one of 96 pairs
   (seeds 0-3 of the tool above, one torch thread) stayed 0.21 px off with a 25 px centre
   offset. With (40, 20, 10, 20): mean 0.013-0.016 px per seed, at most 0.034 (before
   0.017-0.024, at most 0.21), for ~1.2x the time.

4. At 512 and 1024 px the loss is taken at the quarter of the target's pixels with the
   strongest gradient (`LEVEL_SHARES`, `_level`): flat areas cost as much as edges but say
   nothing once the pair is aligned to a pixel. In one process, alternated with every pixel
   on 6 pairs: 0.65x the time per fit (0.45-0.83), the same EPE to 0.001 px. Seeds 0-3 of the
   tool (24 pairs each): mean 0.013-0.015 px, at most 0.036 (every pixel: 0.013-0.016, at
   most 0.034); JPEG 90 pairs, seeds 0, 1, 3: 0.014-0.016, at most 0.086 (0.013-0.015, at
   most 0.073); JPEG 75, seed 0: 0.015, 0.032 (0.017, 0.040). A tenth of the pixels left a
   weak lens 0.2 px off.
5. From 256 px on, the gradient of the alpha = 0 framing goes through the last Newton step of
   its border solve only (`IMPLICIT_FROM`): alternated in one process on 6 pairs, 0.72x the
   time per fit (0.57-1.02). Seeds 0-3: mean 0.014-0.016 px, at most 0.041; JPEG 90, seeds
   0, 1, 3: 0.013-0.016, at most 0.039; JPEG 75, seed 0: 0.016, 0.032. With both changes,
   1.1-1.3 s a pair with 2 workers on 2 cores, against 2.6-2.8 s before.

The fit residual (mean absolute grey-level difference after warping, over every pixel of the
finest level) is stored with the label so that training can skip pairs the parametric model
does not explain.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from lens.geometry import LensParams, optimal_new_camera, parametric_points
from lens.training.losses import EPE_COLS, EPE_ROWS, endpoint_error, warp_points

LEVEL_WIDTHS = (128, 256, 512, 1024)
K1_SEARCH = np.linspace(-0.5, 0.3, 41)
STEPS_PER_LEVEL = (40, 20, 10, 20)
LEVEL_SHARES = (1.0, 1.0, 0.25, 0.25)
# From this level width on, the alpha = 0 camera's Newton solve is differentiated through its
# last step only (`lens.geometry.camera.undistort_points`' implicit_grad): the coarsest level
# has aligned the pair, so L-BFGS probes lenses near where Newton has converged. From the
# coarsest level on, one pair of 96 ended 0.92 px off (seed 2 of the tool).
IMPLICIT_FROM = 256


@dataclass
class FitResult:
    params: LensParams
    zoom: float
    residual_grey: float

    def epe_px(self, true: torch.Tensor, height: int, width: int) -> float:
        """Endpoint error (px) of the fitted warp against the correction of the lens ``true``
        ``(1, 8)``, on the EPE lattice of a ``height x width`` image (`lens.training.losses`)."""
        theta = torch.tensor([self.params.k1, self.params.k2, self.params.cx, self.params.cy, np.log(self.zoom)], dtype=torch.float32)
        return float(endpoint_error(warp_for(theta, height, width, EPE_ROWS, EPE_COLS), warp_points(true, height, width), height, width))

    def to_record(self, pair_id: str) -> dict:
        return {"pair_id": pair_id, "params": self.params.as_dict(), "zoom": self.zoom,
                "fit_residual_grey": self.residual_grey, "source": "pseudo-label"}


def _grey_level(rgb: np.ndarray, width: int) -> torch.Tensor:
    grey = cv2.cvtColor(rgb[..., :3], cv2.COLOR_RGB2GRAY) if rgb.shape[2] >= 3 else rgb[..., 0]
    h = max(2, round(grey.shape[0] * width / grey.shape[1]))
    small = cv2.resize(grey, (width, h), interpolation=cv2.INTER_AREA).astype(np.float32)
    return torch.from_numpy(small)[None, None]


def _full_params(theta: torch.Tensor) -> torch.Tensor:
    """theta = (k1, k2, cx, cy, log zoom) -> (1, 8) lens parameters (f = width)."""
    zero = torch.zeros(1, dtype=theta.dtype)
    return torch.cat([theta[0:2], zero, zero, zero, torch.ones(1, dtype=theta.dtype), theta[2:4]]).unsqueeze(0)


def _lattice(height: int, width: int, out_h: int, out_w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-resolution pixel coordinates ``(1, 1, out_w)`` and ``(1, out_h, 1)`` of an
    ``out_h x out_w`` level's pixels."""
    return torch.linspace(0, width - 1, out_w).reshape(1, 1, -1), torch.linspace(0, height - 1, out_h).reshape(1, -1, 1)


def _warp_at(theta: torch.Tensor, height: int, width: int, u: torch.Tensor, v: torch.Tensor, implicit_grad: bool = False) -> torch.Tensor:
    """Normalised sampling positions ``(1, *S, 2)`` of the fitted warp at output pixels ``(u, v)``."""
    params = _full_params(theta)
    cam = optimal_new_camera(params, height, width, implicit_grad=implicit_grad)
    cam = torch.cat([cam[:, :2] * torch.exp(theta[4]), cam[:, 2:]], dim=1)
    return parametric_points(params, cam, u, v, height, width)


def warp_for(theta: torch.Tensor, height: int, width: int, out_h: int, out_w: int) -> torch.Tensor:
    """``(1, out_h, out_w, 2)`` grid of the fitted warp, sampled on an ``out_h x out_w`` lattice
    of the ``height x width`` image."""
    return _warp_at(theta, height, width, *_lattice(height, width, out_h, out_w))


@dataclass
class _Level:
    """One level of the pyramid: the input ``src`` ``(1, 1, h, w)``, and the target's values
    ``dst`` at the output pixels ``(u, v)`` (full-resolution coordinates) the loss is taken at."""

    src: torch.Tensor
    dst: torch.Tensor  # (1, 1, *S)
    u: torch.Tensor
    v: torch.Tensor


def _level(original: np.ndarray, generated: np.ndarray, width: int, share: float = 1.0) -> _Level:
    """The level ``width`` pixels wide; with ``share`` < 1, only that share of the target's pixels,
    those of strongest gradient (3 x 3 Sobel, spread to their neighbours): flat areas add cost
    but no information once the coarse levels have aligned the pair to a pixel or so."""
    src, dst = _grey_level(original, width), _grey_level(generated, width)
    height_full, width_full = original.shape[:2]
    h, w = dst.shape[-2:]
    u, v = _lattice(height_full, width_full, h, w)
    if share >= 1:
        return _Level(src, dst, u, v)
    grey = dst[0, 0].numpy()
    gx, gy = cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1)
    # squared, not cv2.magnitude, whose results differ by 1 ulp from call to call (the same
    # pair would get other pixels, and another label)
    strength = cv2.dilate(gx * gx + gy * gy, np.ones((3, 3), np.uint8))
    keep = np.sort(np.argsort(-strength.ravel(), kind="stable")[: max(1, int(share * h * w))])
    rows, cols = torch.from_numpy(keep // w), torch.from_numpy(keep % w)
    return _Level(src, dst.reshape(-1)[keep].reshape(1, 1, 1, -1), u[0, 0, cols].reshape(1, 1, -1), v[0, rows, 0].reshape(1, 1, -1))


def _sampled_costs(src: torch.Tensor, dst: torch.Tensor, grid: torch.Tensor, per_lens: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``src`` sampled at ``grid`` against ``dst``, over the positions inside the input: the mean
    Charbonnier cost and the mean absolute difference, in grey levels; per lens of the batch
    with ``per_lens``, else over the whole batch."""
    warped = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=True)
    inside = ((grid.abs() <= 1).all(dim=-1)).unsqueeze(1).float()
    total = (lambda t: t.sum(dim=(1, 2, 3))) if per_lens else (lambda t: t.sum())
    count = total(inside).clamp(min=1)
    charbonnier = torch.sqrt((warped - dst) ** 2 + 1.0) - 1.0
    return total(charbonnier * inside) / count, total((warped - dst).abs() * inside) / count


def _loss(theta, level: _Level, height, width):
    grid = _warp_at(theta, height, width, level.u, level.v, level.src.shape[-1] >= IMPLICIT_FROM)
    return _sampled_costs(level.src, level.dst, grid)


def _k1_scores(level: _Level, height: int, width: int) -> torch.Tensor:
    """`_loss` of every radial lens (k1, 0) of `K1_SEARCH` (the rest zero) at a dense level,
    in one batch: the same scores to the bit, in 0.03 s against 0.15 s one lens at a time
    (3 pairs), whose fixed costs (the alpha = 0 camera's border solve, small tensors)
    dominate at 128 px."""
    k1 = torch.from_numpy(K1_SEARCH).float()
    params = torch.zeros(len(k1), 8)
    params[:, 0], params[:, 5] = k1, 1.0
    grid = parametric_points(params, optimal_new_camera(params, height, width), level.u, level.v, height, width)
    return _sampled_costs(level.src.expand(len(k1), -1, -1, -1), level.dst, grid, per_lens=True)[0]


def _fit_variables(height: int, width: int) -> torch.Tensor:
    """``(5, 5)`` matrix taking theta (k1, k2, cx, cy, log zoom) to the variables L-BFGS moves:
    the radial lens as the displacement (px) it causes at half and all of the corner's radius,
    the principal point in pixels, and the zoom as the corner's displacement (px). In
    (k1, k2) the loss has a long curved valley (a larger k1 with a larger k2 of the other sign
    bends much the same), where L-BFGS stopped short or ran off (k1 = -1.8 from a true -0.1);
    in displacements every variable moves the image by about as much."""
    corner = float(np.hypot((width - 1) / 2, (height - 1) / 2)) / width  # normalised by f = width
    m = torch.zeros(5, 5, dtype=torch.float64)
    for row, r in enumerate((corner / 2, corner)):
        m[row, 0], m[row, 1] = width * r**3, width * r**5
    m[2, 2] = m[3, 3] = width
    m[4, 4] = width * corner
    return m.float()


def fit_pair(original: np.ndarray, generated: np.ndarray) -> FitResult:
    """Fit the warp mapping ``original`` (distorted, RGB uint8) onto ``generated`` (target)."""
    height, width = original.shape[:2]
    theta = torch.zeros(5, dtype=torch.float32)
    coarse = _level(original, generated, LEVEL_WIDTHS[0])
    with torch.no_grad():
        theta[0] = float(K1_SEARCH[int(torch.argmin(_k1_scores(coarse, height, width)))])
    to_variables = _fit_variables(height, width)
    to_theta = torch.linalg.inv(to_variables)
    for width_px, steps, share in zip(LEVEL_WIDTHS, STEPS_PER_LEVEL, LEVEL_SHARES):
        level = _level(original, generated, width_px, share)
        z = (to_variables @ theta).requires_grad_(True)
        optim = torch.optim.LBFGS([z], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)

        def closure():
            optim.zero_grad()
            loss = _loss(to_theta @ z, level, height, width)[0]
            loss.backward()
            return loss

        optim.step(closure)
        theta = (to_theta @ z).detach()
    with torch.no_grad():  # over every pixel of the finest level, whatever share the fit used
        residual = _loss(theta, _level(original, generated, LEVEL_WIDTHS[-1]), height, width)[1]
    params = LensParams.from_sequence(_full_params(theta)[0].tolist())
    return FitResult(params, float(torch.exp(theta[4])), float(residual))


def label_pair(pair_id: str, original: Path, generated: Path) -> dict:
    """`fit_pair` on a pair's files as a `labels.jsonl` record, or ``{"pair_id", "error"}``
    when a file cannot be read (a worker process hands back plain data). One torch thread per
    fit: on 2 cores a fit took 4.8 s with one thread and 6.6 s with two (its tensors are
    small), so parallel pairs beat parallel threads, and a label does not depend on how many
    workers made it."""
    from lens.runtime.io import ImageReadError, read_image

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fit_pair(read_image(original).pixels, read_image(generated).pixels).to_record(pair_id)
    except ImageReadError as exc:
        return {"pair_id": pair_id, "error": str(exc)}
    finally:
        torch.set_num_threads(threads)


def _quiet_worker(parent: int) -> None:
    """Pool initializer: Ctrl-C is the parent's to handle (it keeps the labels made so far);
    exit with the parent."""
    import signal

    from lens.runtime.child_processes import exit_with_parent

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with_parent(parent)


def label_pairs(pairs, workers: int):
    """`label_pair` of each of ``pairs`` (`lens.training.pairs.Pair`), in their order, over
    ``workers`` processes (in this one for 1)."""
    if workers <= 1:
        for pair in pairs:
            yield label_pair(pair.pair_id, pair.original, pair.generated)
        return
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    # spawned, not forked: the parent may hold torch's OpenMP threads
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_quiet_worker, initargs=(os.getpid(),)) as pool:
        try:
            yield from pool.map(label_pair, [p.pair_id for p in pairs], [p.original for p in pairs], [p.generated for p in pairs])
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
