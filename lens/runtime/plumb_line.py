"""Plumb-line refinement: read the lens from the photo's own straight lines.

The network sees the photo at 240 px, where two lenses of the workload differ by about one
pixel of bend after the alpha = 0 zoom; so far it learns the typical lens, not this one.
Straight edges at 1024 px carry the bend directly (a line near the border bows by 5-20 px at
2048 px). So the network's parameters are the starting point, and the lens is refitted so that
the photo's long edges become straight after undistortion (the plumb-line method of Brown,
1971, and Devernay & Faugeras, 2001). Steps, all OpenCV / numpy (the runtime has no torch):

1. Canny edges of the greyscale photo at about `WORK_WIDTH` (thresholds from its contrast), linked
   into chains (findContours), each edge pixel moved to the sub-pixel peak of the gradient.
2. Chains are split at corners into nearly straight pieces (Douglas-Peucker). After
   undistortion with the current lens, pieces with the same gradient polarity on one line are
   joined (a grid line crossed by others, a row of window sills): a line is as long as the
   photo allows, and its bend grows with the square of its length.
3. Levenberg-Marquardt with variable projection minimises each line's scale-free distance from
   straight, plus a prior around the network's radial shape (the same for every focal length
   of one warp); lines far worse than the median (curved objects) are dropped. Three rounds
   with tighter joins.
4. Model: the workload's centred radial lens (k1, k2; focal length kept: with a centred lens
   (k1, k2, f) are degenerate in pixels, f -> s f, k1 -> s^2 k1, k2 -> s^4 k2 is the same
   warp), or the full one (+ k3, p1, p2, principal point) when the lines clearly ask for it.

A fit is used only when at least `MIN_LINES` lines support it, they end up straight, lines
that all run one way lie on both sides of the centre, most of them get straighter, they prefer
it to the network's lens by more than its extra freedom explains (an F-test), two halves of
them agree on the warp, and the lens is a plausible one with a monotonic radial map (at some
focal length: it is reported at the one nearest the network's); otherwise the
network's parameters stand and `LineFit.code` says why (portraits and landscapes have few
straight lines). The thresholds below were set on synthetic scenes of both regimes.
"""
from __future__ import annotations

import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace

import cv2
import numpy as np

from lens.conventions import PARAM_BOUNDS, PARAM_NAMES, REGIME_RANGES
from lens.runtime.child_processes import exit_with_parent
from lens.runtime.lens_maps import camera_px, undistort_normalised, undistort_px

# Edges
# Edges are found on the photo area-averaged to about `WORK_WIDTH` (`work_image`), by
# a whole factor where the width allows, the rows cropped to a multiple of it: OpenCV's fast
# area path (0.14 ms against 5 ms for 2048 x 1367 -> 1024 x 684, whose rows do not halve evenly).
WORK_WIDTH = 1024  # 768 loses accuracy (0.13 -> 0.58 px on refitted workload scenes of 2048 px) for no speed
# Every length and tolerance below is in pixels of the photo scaled to `REFERENCE_WIDTH`, the
# width they were set at (`_in_reference_frame`). The edges are found at `WORK_WIDTH` whatever
# the photo's size, so their noise, the lines' bend and the split halves' gap are all the same
# share of the width at any size: in the photo's own pixels they are twice as large at 4096 px.
REFERENCE_WIDTH = 2048
CANNY_PERCENTILE, CANNY_LOW_RATIO, CANNY_FLOOR = 90.0, 0.4, 24.0  # Sobel 3x3 magnitude units
BLUR_SIGMA = 1.0
MIN_CHAIN = 24  # edge pixels at WORK_WIDTH
# Pieces and lines (lengths in full-resolution pixels)
MIN_PIECE_PX = 30.0
PIECE_TOLERANCE = 2.0  # Douglas-Peucker tolerance (edge pixels are whole working pixels here)
PIECE_STRIDE = 4  # every 4th edge pixel: neighbours carry the same information
# per round: join angle (deg), join offset (px), largest rms distance from straight a line may
# keep (px; before the round's fit: a wrong starting lens leaves real lines bent by up to ~6 px)
ROUNDS = ((4.0, 12.0, 8.0), (2.0, 6.0, 2.0), (1.0, 3.0, 1.0))
MIN_LINE_FRACTION = 0.15  # of the image width
POINTS_PER_LINE = 32
# Fit
EDGE_NOISE_PX = 0.2  # rms distance of edge points from a straight edge
RADIAL = (0, 1)  # k1, k2 (PARAM_NAMES indices): the workload's centred radial lens
NOT_RADIAL = (2, 3, 4, 6, 7)  # zero in the radial model
FULL = (0, 1, 2, 3, 4, 6, 7)  # + k3, p1, p2 and the principal point
# The prior holds the radial shape near the network's: the distorted radius at `PRIOR_RADII` of
# the corner's, relative to the corner's (`_radial_shape_and_derivative`), within
# `PRIOR_SHAPE_PX` (the workload's lenses spread by 15-22 px there). A prior on the warp, not
# on k1 and k2 one by one: they trade off (a larger k1 with a larger k2 of the other sign bends
# much the same), so independent priors penalise ordinary warps with large coefficients, such
# as a wide lens seen at the network's focal length. k3 keeps a small prior of its own too (it
# only bends the corners; without one the split-half fits of the full model wander), and the
# other terms one around zero with the general regime's spread. With `equivalent_in_bounds`,
# on 64 general-regime validation scenes: mean EPE 6.02 -> 5.37 px.
PRIOR_RADII = (0.3, 0.55, 0.8)
PRIOR_SHAPE_PX = 12.0
PRIOR_SIGMA = {2: 0.03, 3: 0.002, 4: 0.002, 6: 0.01, 7: 0.01}
RADIAL_TERMS = (0, 1, 2)
ROUND_ITERATIONS = 6  # Levenberg-Marquardt steps of the early rounds
FULL_MODEL_GAIN, FULL_MODEL_F = 1.1, 1.0  # model choice (`refine_with_lines`)
# The full model is fitted only where it could pass that choice (`_full_model_may_pass`): where
# its cost gain, as one Gauss-Newton step from the radial fit predicts it, times this margin,
# would. On the 96 validation draws of both regimes (seed 0) the full fit's gain was at most 2.9x
# (median 1.05x) the predicted one, and 46 of the 96 full fits were skipped, none of which the
# model choice had taken; no outcome changed there, on seed 1's draws, or on 17 real photos
# under 8 lenses each (`tools/line_fit_photos.py`). The fit ran ~7% faster.
FULL_MODEL_PREDICTION_MARGIN = 5.0
# Acceptance
MIN_LINES = 5
# Plausible lenses: the general regime's, widened by this share (`_plausible_bounds`); a fit
# outside them at every focal length is refused. The model's own `PARAM_BOUNDS` are wider:
# the fit bent a cat's fur and whiskers straight with k1 = -1.6, k2 = 5.5 (at f = 1.03), a lens
# inside them at f = 0.70 and 70 px from the true one. The principal point is held only to the
# model's bounds (`LOOSE_TERMS`): lines pin it down poorly and it trades against the tangential
# terms, so good full-model warps had a centre beyond the regime's (0.4 px off the true warp
# where the radial lens was 5.6 px off); on the validation draws, mean EPE of the general
# regime 2.56 -> 2.50 px (seed 0) and 2.76 -> 2.73 (seed 1), no fit used on real line-free
# photos. Freeing the tangential terms as well was worse on seed 1 (a fit 5.5 px off).
PLAUSIBLE_MARGIN = 0.25
LOOSE_TERMS = ("cx", "cy")
MAX_HALF_GAP_PX = 3.0
# With many lines, the full model's halves disagree mostly on the principal point, which half
# the lines pin down poorly; the fit on all of them was 0.8-3.3 px from the true lens on
# validation scenes whose halves disagreed by 3-7 px, where the radial lens was 1.3-12 px off.
MANY_LINES, MAX_HALF_GAP_FULL_PX = 30, 8.0
# The fit must explain its change (`_evidence`): a portrait's lines (a flag, a sleeve) were
# bent straight-ish by a lens 16 px from the network's and 33 px from the true one, getting
# only 14% straighter (F = 0.7). On 128 synthetic validation scenes, every other fit below
# F = 3 moved the warp by under 2 px.
MIN_EVIDENCE_F = 2.0
# A fit that moves the warp far from the network's needs more: gravel at 4000 px (9 lines, two
# of them texture joined across the frame) got 18% straighter (F = 2.6) under a lens that moved
# the warp 20 px, 56 px worse than the network's. On 450 fits used on synthetic validation draws
# (1536 to 6000 px, both regimes) every fit that moved the warp by more than `FAR_MOVE_PX` had
# F >= 6.6 (5th percentile 38), and every fit with F < 5 moved it by under 3.7 px.
FAR_MOVE_PX, MIN_EVIDENCE_F_FAR = 5.0, 5.0
NEWTON_TOLERANCE = 1e-12  # normalised units (~1e-9 px): converged for any later use
# Textures that passed the other checks on real photos (`tools/line_fit_photos.py`): wood
# grain, its lines all one way in one corner, that a pincushion lens bent straight (37 px off
# the true lens); and grass or grain where one or two blades carried all the evidence while
# most lines got less straight. A lens bends parallel lines on opposite sides of its centre
# in opposite ways, a texture all alike: lines that run one way (`_one_way`: alignment above
# `MAX_ALIGNMENT`) must lie on both sides (at least `MIN_BALANCE` of their length on the
# lesser one). Grain: alignment 0.97-0.99, balance 0.11-0.15; a launch pad's towers, all
# vertical: alignment up to 0.98, balance 0.33-0.50. On 166 fits used on synthetic validation
# scenes the alignment was at most 0.87, and the share of lines that got straighter at least
# 0.5 (`MIN_STRAIGHTER_SHARE`).
MAX_ALIGNMENT, MIN_BALANCE = 0.9, 0.25
MIN_STRAIGHTER_SHARE = 0.5
# median over the fitted lines: synthetic edges fit to 0.05-0.3 px, a real brick wall (512 px,
# upscaled 4x) to 0.48-0.67; at 0.6 px 6 of 16 good fits there were refused (network 6-28 px
# off, fit 0.4-2.6); texture that fits this well is refused by the checks after this one
MAX_LINE_RMS_PX = 0.8


@dataclass
class LineFit:
    params: np.ndarray  # (8,) float64, PARAM_NAMES order: the refined set, or the prior if not accepted
    accepted: bool
    code: str  # refined_radial | refined_full | too_few_lines | lines_not_straight | one_direction | few_lines_straighter | weak_evidence | halves_disagree | out_of_bounds | not_monotonic | fit_error
    reason: str  # the same in words, with the numbers
    lines: int  # lines supporting the final fit
    rms_prior_px: float  # median line residual (px) under the prior parameters, same lines
    rms_px: float  # ... under the returned parameters

    def as_dict(self) -> dict:
        return {"accepted": self.accepted, "code": self.code, "reason": self.reason, "lines": self.lines,
                "rms_prior_px": round(self.rms_prior_px, 4), "rms_px": round(self.rms_px, 4)}


def _ideal_derivative(x, y, model_jacobian, params, height, width, fitted) -> tuple[np.ndarray, np.ndarray]:
    """Derivatives ``(N, len(fitted))`` of the ideal pixels' x and y by the parameters
    ``fitted`` (indices), at the ideal normalised points ``x, y`` of `undistort_normalised` and
    its Jacobian there: the implicit function theorem on distort(ideal) = observed."""
    f = params[5] * width
    jxx, jxy, jyy = model_jacobian
    det = jxx * jyy - jxy * jxy
    det = np.where(np.abs(det) < 1e-9, 1e-9, det)
    ixx, ixy, iyy = jyy / det, -jxy / det, jxx / det  # inverse of the model's Jacobian
    dx, dy = np.empty((len(x), len(fitted))), np.empty((len(x), len(fitted)))
    r2 = None
    for j, index in enumerate(fitted):
        if index in (0, 1, 2, 3, 4):  # lens terms: ideal = f u, d u = -J^-1 d distort
            if r2 is None:
                r2 = x * x + y * y
            if index in (0, 1, 2):  # k1, k2, k3: d distort / d k = (x, y) r^2, r^4 or r^6
                power = r2 ** (index + 1)
                bx, by = x * power, y * power
            elif index == 3:  # p1
                bx, by = 2 * x * y, r2 + 2 * y * y
            else:  # p2
                bx, by = r2 + 2 * x * x, 2 * x * y
            dx[:, j] = -(ixx * bx + ixy * by) * f
            dy[:, j] = -(ixy * bx + iyy * by) * f
        elif index == 6:  # principal point, in units of the width: ideal = f u((p - c) / f) + c
            dx[:, j], dy[:, j] = (1 - ixx) * width, -ixy * width
        else:
            dx[:, j], dy[:, j] = -ixy * width, (1 - iyy) * width
    return dx, dy


def _bilinear(values, x: np.ndarray, y: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear interpolation at ``(x, y)`` of an ``height x width`` image whose pixels at flat
    indices ``values(indices)`` returns."""
    x = np.clip(x, 0, width - 1.001)
    y = np.clip(y, 0, height - 1.001)
    x0, y0 = x.astype(np.int64), y.astype(np.int64)
    fx, fy = x - x0, y - y0
    at = y0 * width + x0
    top = values(at) * (1 - fx) + values(at + 1) * fx
    bottom = values(at + width) * (1 - fx) + values(at + width + 1) * fx
    return top * (1 - fy) + bottom * fy


@dataclass
class _Chains:
    """Linked edge pixels, all chains in one array; sub-pixel positions on request (the
    pieces use every `PIECE_STRIDE`-th pixel only)."""

    pixels: np.ndarray  # (N, 2) int32 edge pixels at the working resolution, chain after chain
    starts: np.ndarray  # (chains + 1,) where each chain starts in ``pixels``, and the end
    gx: np.ndarray  # working-resolution Sobel gradients, int16
    gy: np.ndarray
    scale_x: float  # full-resolution pixels per working pixel, across
    scale_y: float  # and down (the same to within a row over the height)

    def magnitude(self, at: np.ndarray) -> np.ndarray:
        """The gradient magnitude at these flat pixel indices, as ``cv2.magnitude`` gives it
        (float32), computed only where the sub-pixel peaks need it."""
        gx, gy = self.gx.ravel()[at].astype(np.float32), self.gy.ravel()[at].astype(np.float32)
        return np.sqrt(gx * gx + gy * gy)

    def subpixel(self, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Edge pixels ``(n, 2)`` moved to the parabola peak of the gradient magnitude along
        the gradient direction: full-resolution positions, and the image gradient there (for
        the polarity)."""
        at = c[:, 1] * self.gx.shape[1] + c[:, 0]
        g = np.stack([self.gx.ravel()[at], self.gy.ravel()[at]], axis=1).astype(np.float64)
        n = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-9)
        x, y = c[:, 0].astype(np.float64), c[:, 1].astype(np.float64)
        m0 = self.magnitude(at)
        size = self.gx.shape
        mp = _bilinear(self.magnitude, x + n[:, 0], y + n[:, 1], *size)
        mm = _bilinear(self.magnitude, x - n[:, 0], y - n[:, 1], *size)
        curvature = mm - 2 * m0 + mp
        peaked = curvature < -1e-6
        offset = np.clip(np.where(peaked, 0.5 * (mm - mp) / np.where(peaked, curvature, -1.0), 0.0), -0.5, 0.5)
        return (np.stack([x, y], axis=1) + offset[:, None] * n + 0.5) * np.array([self.scale_x, self.scale_y]) - 0.5, g


def _percentile(values: np.ndarray, q: float) -> float:
    """``np.percentile(values, q)`` (linear interpolation) by partial sorting: 10x faster."""
    flat = values.ravel()
    position = q / 100 * (len(flat) - 1)
    lo = int(np.floor(position))
    hi = min(lo + 1, len(flat) - 1)
    part = np.partition(flat, [lo, hi])
    return float(part[lo] + (part[hi] - part[lo]) * (position - lo))


@dataclass
class WorkImage:
    """What the fit reads a photo from (`work_image`): small enough to hand to a worker process
    cheaply (0.7 MB for a 2048 x 1367 photo, against 2.8 MB at full resolution)."""

    pixels: np.ndarray  # (h, w) uint8 grey, area-averaged from the full-resolution photo
    scale_x: float  # full-resolution pixels per working pixel
    scale_y: float
    height: int  # the full-resolution photo's size
    width: int


def work_image(grey: np.ndarray) -> WorkImage:
    """A full-resolution ``(H, W)`` greyscale photo area-averaged to about `WORK_WIDTH` pixels
    wide: by the whole factor ``k`` nearest ``W / WORK_WIDTH`` (the columns and rows beyond a
    multiple of ``k`` left out, so that both axes shrink exactly ``k`` times) where the width is
    a multiple of `WORK_WIDTH`, or ``k`` is 3 or more and leaves at least 0.9 `WORK_WIDTH`;
    else to exactly `WORK_WIDTH`.

    Whole factors take OpenCV's fast area path (one thread): ~6 ms against ~26 for the
    fractional resize at 4000 x 3000, ~10 against ~68 at 6000 x 4000. On validation draws
    of both regimes the fits were as close to the true lens as from the fractional resize
    (mean gap whole-factor minus fractional, standard error in brackets: 3000 x 2000, k = 3,
    +0.07 px (0.18), 64 draws; 4000 x 3000, k = 4, +0.40 (0.19) and +0.11 (0.16), 48 and 80;
    6000 x 4000, k = 6, -0.41 (0.18), 40). On 13 line-free real photos x 16 lenses at 4000 px
    each resize let one texture fit through (gravel with this one, wood grain with the
    fractional one, 56 and 31 px worse than the network's lens); with `FAR_MOVE_PX` none is
    used. The largest whole factor that keeps `WORK_WIDTH` (1333 px at 4000 x 3000) was as
    fast overall (the wider image costs the fit what the resize saves) and bent a cat's fur
    straight with a lens 99 px off."""
    height, width = grey.shape
    if width <= WORK_WIDTH:
        return WorkImage(np.ascontiguousarray(grey), 1.0, 1.0, height, width)
    k = round(width / WORK_WIDTH)
    if (width == k * WORK_WIDTH or (k >= 3 and width >= 0.9 * WORK_WIDTH * k)) and height >= 8 * k:
        cols, rows = width // k, height // k
        return WorkImage(cv2.resize(grey[: rows * k, : cols * k], (cols, rows), interpolation=cv2.INTER_AREA), k, k, height, width)
    rows = max(8, round(height * WORK_WIDTH / width))
    return WorkImage(cv2.resize(grey, (WORK_WIDTH, rows), interpolation=cv2.INTER_AREA), width / WORK_WIDTH, height / rows, height, width)


def _in_reference_frame(work: WorkImage) -> tuple[WorkImage, float]:
    """``work`` with its full-resolution frame scaled to `REFERENCE_WIDTH` (pixel centres kept:
    a photo pixel p is reference pixel (p + 0.5) s - 0.5, so the lens parameters, in units of
    the width, mean the same), and the photo pixels per reference pixel."""
    s = REFERENCE_WIDTH / work.width
    if s == 1:
        return work, 1.0
    return replace(work, scale_x=work.scale_x * s, scale_y=work.scale_y * s, height=work.height * s, width=REFERENCE_WIDTH), 1 / s


def edge_chains(work: WorkImage) -> _Chains:
    """Canny edges of a working image, linked into chains."""
    scale = work.scale_x
    small = cv2.GaussianBlur(work.pixels, (0, 0), BLUR_SIGMA)
    # int16 gradients: what Canny takes, exact for 8-bit input; the magnitude is computed only
    # where it is read (a full-image one cost as much as the Sobel filters)
    gx = cv2.Sobel(small, cv2.CV_16S, 1, 0, ksize=3)
    gy = cv2.Sobel(small, cv2.CV_16S, 0, 1, ksize=3)
    # thresholds follow the photo's contrast: a faint grid and a high-contrast facade alike
    high = max(CANNY_FLOOR, _percentile(cv2.magnitude(gx[::4, ::4].astype(np.float32), gy[::4, ::4].astype(np.float32)), CANNY_PERCENTILE))
    edges = cv2.Canny(gx, gy, high * CANNY_LOW_RATIO, high, L2gradient=True)
    contours, _ = cv2.findContours(edges, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    # chains too short to hold one straight piece are texture: dropped before any numpy work
    contours = [c for c in contours if len(c) >= MIN_CHAIN]
    if not contours:
        return _Chains(np.zeros((0, 2), np.int32), np.zeros(1, np.int64), gx, gy, scale, work.scale_y)
    every = np.concatenate(contours).reshape(-1, 2)
    # each (x, y) int32 pair viewed as one int64: selecting from a one-dimensional array is
    # ~3x faster than selecting rows
    packed = every.view(np.int64).ravel()
    chain = np.repeat(np.arange(len(contours)), [len(c) for c in contours])
    # a one-pixel-wide edge is walked out and back: keep each pixel once per chain, in order.
    # An image of each pixel's first index settles the pixels first met on their own chain;
    # only those met before on another chain (edges around a closed region) need a sort.
    flat = every[:, 1].astype(np.int64) * gx.shape[1] + every[:, 0]  # flat indices: ufunc.at is 5x faster with one index array
    where = np.full(gx.size, len(every), np.int32)
    np.minimum.at(where, flat, np.arange(len(every), dtype=np.int32))  # plain assignment keeps an unspecified one of repeated indices
    first_seen = where[flat]
    keep = first_seen == np.arange(len(every))
    shared = np.flatnonzero(chain[first_seen] != chain)
    if len(shared):
        _, first = np.unique((chain[shared].astype(np.int64) << 32) | (every[shared, 0].astype(np.int64) << 16) | every[shared, 1], return_index=True)
        keep[shared[first]] = True
    packed, chain = packed[keep], chain[keep]
    every = packed.view(np.int32).reshape(-1, 2)
    sizes = np.bincount(chain, minlength=len(contours))
    firsts = np.flatnonzero(np.r_[True, chain[1:] != chain[:-1]])
    lo, hi = np.minimum.reduceat(every, firsts), np.maximum.reduceat(every, firsts)
    present = np.flatnonzero(sizes)
    extent = np.zeros(len(contours))
    extent[present] = (hi - lo).max(axis=1) * scale
    good = (sizes >= MIN_CHAIN) & (extent >= MIN_PIECE_PX)
    keep = good[chain]
    c, chain = packed[keep].view(np.int32).reshape(-1, 2), chain[keep]
    starts = np.flatnonzero(np.r_[True, chain[1:] != chain[:-1]]) if len(c) else np.zeros(0, np.int64)
    return _Chains(c, np.r_[starts, len(c)].astype(np.int64), gx, gy, scale, work.scale_y)


@dataclass
class _Pieces:
    """Nearly straight pieces of edge chains, all in one array."""

    points: np.ndarray  # (N, 2) distorted full-resolution pixels
    grad: np.ndarray  # (count, 2) image gradient summed over each piece's points (its polarity)
    label: np.ndarray  # (N,) piece index
    count: int


def straight_pieces(chains: _Chains, tolerance: float = PIECE_TOLERANCE) -> _Pieces:
    """Split chains at corners (Douglas-Peucker in the distorted photo). A lens bends a line
    gently (a 2000 px line bows by ~20 px), so a piece within ``tolerance`` px of straight is
    up to ~500 px long; pieces of one line are joined again after undistortion (`_join`)."""
    if len(chains.pixels) == 0:
        return _Pieces(np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0, np.int64), 0)
    starts = chains.starts
    sizes = np.diff(starts)
    chain = np.repeat(np.arange(len(sizes)), sizes)
    pixels = chains.pixels.astype(np.int64)
    contour = chains.pixels.reshape(-1, 1, 2)
    vertices = [cv2.approxPolyDP(contour[a:b], tolerance / chains.scale_x, False).reshape(-1, 2) for a, b in zip(starts[:-1].tolist(), starts[1:].tolist())]
    # approxPolyDP returns a subsequence of its input (pixels are unique within a chain): find
    # their indices among all chains' pixels through an image of where each pixel is (one
    # chain holding it, then another, then a search), instead of sorting every edge pixel
    corner = np.concatenate(vertices).astype(np.int64)
    corner_chain = np.repeat(np.arange(len(sizes)), [len(v) for v in vertices])
    found = np.empty(len(corner), np.int64)
    unresolved = np.ones(len(corner), bool)
    width = chains.gx.shape[1]
    flat, corner_flat = pixels[:, 1] * width + pixels[:, 0], corner[:, 1] * width + corner[:, 0]
    where = np.empty(chains.gx.size, np.int32)
    for order in (slice(None, None, -1), slice(None)):  # of repeated indices, numpy keeps one (in practice the last)
        if not unresolved.any():
            break
        where[flat[order]] = np.arange(len(pixels), dtype=np.int32)[order]
        candidate = where[corner_flat[unresolved]]
        hit = chain[candidate] == corner_chain[unresolved]
        found[np.flatnonzero(unresolved)[hit]] = candidate[hit]
        unresolved[np.flatnonzero(unresolved)[hit]] = False
    for k in np.flatnonzero(unresolved):  # a pixel on three or more chains
        own = pixels[starts[corner_chain[k]] : starts[corner_chain[k] + 1]]
        found[k] = starts[corner_chain[k]] + np.flatnonzero((own[:, 0] == corner[k, 0]) & (own[:, 1] == corner[k, 1]))[0]
    idx = np.sort(found)
    idx = idx[np.r_[True, idx[1:] != idx[:-1]]]  # np.unique, 7x faster here (numpy 2.4)
    i, j = idx[:-1], idx[1:]  # consecutive corners; a piece lies between two of one chain
    step = pixels[j] - pixels[i]
    piece = (chain[i] == chain[j]) & (j - i >= 8) & (np.hypot(step[:, 0], step[:, 1]) >= MIN_PIECE_PX / chains.scale_x)
    lo, hi = i[piece] + 1, j[piece]  # ends dropped: corners round edges
    if len(lo) == 0:
        return _Pieces(np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0, np.int64), 0)
    # every `PIECE_STRIDE`-th edge pixel: neighbours carry the same information
    counts = (hi - lo + PIECE_STRIDE - 1) // PIECE_STRIDE
    label = np.repeat(np.arange(len(lo)), counts)
    index = np.repeat(lo, counts) + PIECE_STRIDE * (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
    points, grad = chains.subpixel(pixels[index])
    grad = np.stack([np.bincount(label, grad[:, 0], len(lo)), np.bincount(label, grad[:, 1], len(lo))], axis=1)
    return _Pieces(points, grad, label, len(lo))


def _moments(points: np.ndarray, label: np.ndarray, count: int):
    """Per group of points: count, smallest and largest principal variance, centroid
    ``(count, 2)`` and the angle of the major axis."""
    n = np.maximum(np.bincount(label, minlength=count), 1).astype(np.float64)
    mx = np.bincount(label, points[:, 0], count) / n
    my = np.bincount(label, points[:, 1], count) / n
    dx, dy = points[:, 0] - mx[label], points[:, 1] - my[label]
    a = np.bincount(label, dx * dx, count) / n
    b = np.bincount(label, dx * dy, count) / n
    c = np.bincount(label, dy * dy, count) / n
    half_trace, root = (a + c) / 2, np.sqrt(((a - c) / 2) ** 2 + b * b)
    return n, np.maximum(half_trace - root, 0.0), half_trace + root, np.stack([mx, my], axis=1), 0.5 * np.arctan2(2 * b, a - c)


def _join(pieces: _Pieces, undistorted: np.ndarray, max_angle_deg: float, max_offset_px: float) -> np.ndarray:
    """``(count,)`` labels of connected groups of pieces on one undistorted line: same
    gradient polarity, normals within ``max_angle_deg``, each centre within
    ``max_offset_px`` of the other's line."""
    _, _, _, centre, angle = _moments(undistorted, pieces.label, pieces.count)
    normal = np.stack([-np.sin(angle), np.cos(angle)], axis=1)
    polarity = pieces.grad[:, 0] * normal[:, 0] + pieces.grad[:, 1] * normal[:, 1]
    normal = np.where(polarity[:, None] < 0, -normal, normal)
    # Only pieces whose (polarity-aware) normal angles are close can link: with the pieces
    # sorted by the heading of their normal, each is paired with those that follow it within
    # the angle tolerance (around the circle), all at once; then the offsets are tested, the
    # second only on the pairs that pass the first (most candidate pairs are parallel edges
    # elsewhere in the photo).
    count = pieces.count
    heading = np.arctan2(normal[:, 1], normal[:, 0]) % (2 * np.pi)
    order = np.argsort(heading)
    sorted_heading = heading[order]
    first = np.arange(1, count + 1)
    last = np.searchsorted(np.r_[sorted_heading, sorted_heading + 2 * np.pi], sorted_heading + np.radians(max_angle_deg), side="right")
    counts = np.clip(np.minimum(last, first + count - 1) - first, 0, None)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    i = order[np.repeat(np.arange(count), counts)]
    j = order[(np.repeat(first, counts) + offsets) % count]
    nx, ny, cx, cy = normal[:, 0], normal[:, 1], centre[:, 0], centre[:, 1]
    distance = nx * cx + ny * cy  # of each piece's line from the origin
    near = np.abs(nx[i] * cx[j] + ny[i] * cy[j] - distance[i]) < max_offset_px  # centre j from line i
    i, j = i[near], j[near]
    near = np.abs(nx[j] * cx[i] + ny[j] * cy[i] - distance[j]) < max_offset_px  # centre i from line j
    edges = np.stack([i[near], j[near]], axis=1)
    labels = np.arange(pieces.count)
    while True:  # connected components: min-label propagation along edges, pointer jumping
        new = labels.copy()
        np.minimum.at(new, edges[:, 0], labels[edges[:, 1]])
        np.minimum.at(new, edges[:, 1], labels[edges[:, 0]])
        new = new[new]
        if np.array_equal(new, labels):
            return labels
        labels = new


@dataclass
class _Lines:
    points: np.ndarray  # (N, 2) distorted pixels, all lines
    label: np.ndarray  # (N,) line index
    scale: np.ndarray  # (L,) sqrt of the principal variance at the start: residuals in pixels

    def __len__(self) -> int:
        return len(self.scale)

    def subset(self, keep: np.ndarray) -> "_Lines":
        remap = np.cumsum(keep) - 1
        mask = keep[self.label]
        return _Lines(self.points[mask], remap[self.label[mask]], self.scale[keep])


def _lines(pieces: _Pieces, params, height, width, max_angle, max_offset, start=None) -> tuple[_Lines, np.ndarray | None]:
    """Long straight lines under ``params``: joined pieces at least `MIN_LINE_FRACTION` of the
    width long, each thinned to about `POINTS_PER_LINE` points; and the pieces' undistorted
    points, the ``start`` of the next round's Newton iterations (a few then do)."""
    if pieces.count == 0:
        return _Lines(np.zeros((0, 2)), np.zeros(0, np.int64), np.zeros(0)), None
    undistorted = undistort_px(pieces.points, params, height, width, start, 8 if start is None else 3, NEWTON_TOLERANCE)
    _, line = np.unique(_join(pieces, undistorted, max_angle, max_offset), return_inverse=True)  # per piece, then per point
    line = line[pieces.label]
    count = int(line.max()) + 1
    _, _, major, _, _ = _moments(undistorted, line, count)
    long_enough = np.sqrt(12 * major) >= MIN_LINE_FRACTION * width
    sizes = np.bincount(line, minlength=count)
    order = np.argsort(line, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(line)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    keep = long_enough[line] & (rank % np.maximum(sizes // POINTS_PER_LINE, 1)[line] == 0)
    _, label = np.unique(line[keep], return_inverse=True)
    return _Lines(pieces.points[keep], label, np.sqrt(major[long_enough])), undistorted


def _with(params: np.ndarray, fitted: tuple[int, ...], values: np.ndarray) -> np.ndarray:
    out = params.copy()
    out[list(fitted)] = values
    return out


def _line_geometry(params: np.ndarray, lines: _Lines, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per line under ``params``: its rms distance from straight (`line_residuals`), its
    direction (radians), its length and its centre (px, of the undistorted line)."""
    _, minor, major, centre, angle = _moments(undistort_px(lines.points, params, height, width, tolerance=NEWTON_TOLERANCE), lines.label, len(lines))
    return np.sqrt(minor / np.maximum(major, 1e-12)) * lines.scale, angle, np.sqrt(12 * major), centre


def line_residuals(params: np.ndarray, lines: _Lines, height: int, width: int) -> np.ndarray:
    """``(L,)`` per line: its rms distance from straight, in pixels at the line's starting
    scale (scale-free, so shrinking the undistorted frame gains nothing)."""
    return _line_geometry(params, lines, height, width)[0]


def _one_way(params: np.ndarray, angle: np.ndarray, length: np.ndarray, centre: np.ndarray, height: int, width: int) -> tuple[float, float]:
    """How much the lines run one way (1 when all are parallel, 0 for directions spread
    evenly: the length-weighted mean of their doubled direction angles as unit vectors), and
    the share of their length on the lesser side of the lens's centre, across that way."""
    resultant = np.sum(length * np.exp(2j * angle))
    alignment = float(np.abs(resultant) / max(np.sum(length), 1e-12))
    way = np.angle(resultant) / 2
    _, cx, cy = camera_px(params, height, width)
    across = -np.sin(way) * (centre[:, 0] - cx) + np.cos(way) * (centre[:, 1] - cy)
    balance = float(min(length[across > 0].sum(), length[across <= 0].sum()) / max(np.sum(length), 1e-12))
    return alignment, balance


def _radial_powers(focal: float, height: int, width: int) -> tuple[np.ndarray, np.ndarray, float]:
    """The reference radii u of `_radial_shape_and_derivative` at focal length ``focal`` (in
    units of the width), the derivatives of the distorted radius there by (k1, k2, k3), and the
    corner's distance (px)."""
    corner = np.hypot((width - 1) / 2, (height - 1) / 2)
    u = np.array([*PRIOR_RADII, 1.0]) * corner / (focal * width)
    return u, u[:, None] ** np.array([3, 5, 7])[None, :], corner


def _radial_shape_and_derivative(params: np.ndarray, height: int, width: int, powers=None) -> tuple[np.ndarray, np.ndarray]:
    """The lens's radial shape: the distorted radius at `PRIOR_RADII` of a reference radius u
    (the corner's distance over f), over that at u itself, times the corner's distance (px).
    The same for every (f, k) of one warp (u -> u / s, k_i u^(2 i) unchanged). Also its
    derivative ``(len(PRIOR_RADII), 3)`` by (k1, k2, k3). ``powers``: `_radial_powers` at
    ``params``' focal length, when the caller has them."""
    u, powers, corner = powers or _radial_powers(params[5], height, width)
    distorted = u + powers @ params[:3]
    shape = distorted[:-1] / distorted[-1] * corner
    derivative = (powers[:-1] * distorted[-1] - distorted[:-1, None] * powers[-1:]) / distorted[-1] ** 2 * corner
    return shape, derivative


class _Prior:
    """Prior residuals and their Jacobian for the ``fitted`` indices: the radial shape
    (`_radial_shape_and_derivative`) against the network's, and the terms of `PRIOR_SIGMA`
    against zero. ``focal``: the focal length of every parameter set it is called with (the
    fit never moves it), so the radii's powers are computed once."""

    def __init__(self, network: np.ndarray, fitted: tuple[int, ...], height: int, width: int, focal: float):
        self.fitted, self.size = fitted, (height, width)
        self.radial = [j for j, i in enumerate(fitted) if i in RADIAL_TERMS]  # in the shape
        self.radial_terms = [fitted[j] for j in self.radial]
        self.other = [j for j, i in enumerate(fitted) if i in PRIOR_SIGMA]
        self.target = _radial_shape_and_derivative(network, height, width)[0]
        self.sigma = np.array([PRIOR_SIGMA[fitted[j]] for j in self.other])
        self.focal, self.powers = focal, _radial_powers(focal, height, width)
        self.jac = np.zeros((len(PRIOR_RADII) + len(self.other), len(fitted)))
        self.jac[len(PRIOR_RADII) + np.arange(len(self.other)), self.other] = 1 / self.sigma

    def __call__(self, params: np.ndarray, k: np.ndarray, jacobian: bool = False):
        shape, derivative = _radial_shape_and_derivative(params, *self.size, self.powers if params[5] == self.focal else None)
        residuals = np.concatenate([(shape - self.target) / PRIOR_SHAPE_PX, k[self.other] / self.sigma])
        if not jacobian:
            return residuals
        jac = self.jac.copy()
        jac[: len(PRIOR_RADII), self.radial] = derivative[:, self.radial_terms] / PRIOR_SHAPE_PX
        return residuals, jac


class _Straightness:
    """Residuals (per point: distance from its line's best fit, over the line's current
    length, times its starting length) and their Jacobian by the ``fitted`` parameters for
    Levenberg-Marquardt, with each line's own fit (offset, angle) projected out: variable
    projection (Golub and Pereyra), so Gauss-Newton steps see only what the lens changes.
    Newton is warm-started from the ideal points of the parameters the function was made with.

    Speed (the fit is most of the line fit's time, and its arrays are small, so numpy's
    per-call overhead dominates): points are sorted by line once, so per-line sums of all
    fitted parameters' columns are one ``np.add.reduceat`` each; and the Jacobian at a trial
    point that Levenberg-Marquardt accepted reuses that trial's undistortion."""

    def __init__(self, params, lines: _Lines, height, width, prior: np.ndarray, fitted: tuple[int, ...]):
        self.params, self.size, self.fitted = params, (height, width), fitted
        order = np.argsort(lines.label, kind="stable")
        self.points, self.label, self.scale = lines.points[order], lines.label[order], lines.scale
        self.starts = np.flatnonzero(np.r_[True, self.label[1:] != self.label[:-1]])  # every line has points
        self.n = np.diff(np.r_[self.starts, len(self.label)]).astype(np.float64)
        self.prior = _Prior(prior, fitted, height, width, params[5])
        self.start = undistort_px(self.points, params, height, width, iterations=12, tolerance=NEWTON_TOLERANCE)
        self._last = None  # (k, params, x, y, model Jacobian) of the latest evaluation
        self._last_jacobian = None  # (k, residuals, Jacobian) of the latest evaluation with one

    def _sums(self, values: np.ndarray) -> np.ndarray:
        """Per-line sums along the first axis."""
        return np.add.reduceat(values, self.starts, axis=0)

    def _undistort(self, k: np.ndarray):
        if self._last is None or not np.array_equal(self._last[0], k):
            params = _with(self.params, self.fitted, k)
            # two Newton steps from the start: quadratic convergence takes even a 1% start error to 1e-8
            self._last = (k.copy(), params, *undistort_normalised(self.points, params, *self.size, self.start, 2))
        return self._last[1:]

    def __call__(self, k: np.ndarray, jacobian: bool = False):
        if jacobian and self._last_jacobian is not None and np.array_equal(self._last_jacobian[0], k):
            return self._last_jacobian[1:]
        # x and y as separate arrays throughout: numpy's reductions over a length-2 axis and
        # stacking cost more than the arithmetic on a thousand points
        label, n = self.label, self.n
        params, x, y, model_jacobian = self._undistort(k)
        f, cx, cy = camera_px(params, *self.size)
        ux, uy = x * f + cx, y * f + cy
        qx = ux - (self._sums(ux) / n)[label]
        qy = uy - (self._sums(uy) / n)[label]
        moments = self._sums(np.stack([qx * qx, qx * qy, qy * qy], axis=1)) / n[:, None]
        a_xx, a_xy, a_yy = moments[:, 0], moments[:, 1], moments[:, 2]
        half_trace, root = (a_xx + a_yy) / 2, np.sqrt(((a_xx - a_yy) / 2) ** 2 + a_xy * a_xy)
        major = half_trace + root
        angle = 0.5 * np.arctan2(2 * a_xy, a_xx - a_yy)
        cos, sin = np.cos(angle)[label], np.sin(angle)[label]  # along the line; the normal is (-sin, cos)
        a = qy * cos - qx * sin
        # scale-free: the distance over the line's current length, times its starting length
        norm = (self.scale / np.sqrt(np.maximum(major, 1e-12)))[label]
        # in units of a real edge's straightness noise, with the prior as more residuals: a
        # photo whose lines do not pin the lens down (a curved flag, a few lines through the
        # centre) stays near the network's parameters instead of wandering along a flat valley
        prior = self.prior(params, k, jacobian)
        residuals = np.concatenate([a * norm / EDGE_NOISE_PX, prior[0] if jacobian else prior])
        if not jacobian:
            return residuals
        b = qx * cos + qy * sin
        dx, dy = _ideal_derivative(x, y, model_jacobian, params, *self.size, self.fitted)  # (N, P) each
        dmx, dmy = self._sums(dx) / n[:, None], self._sums(dy) / n[:, None]
        da = (dy - dmy[label]) * cos[:, None] - (dx - dmx[label]) * sin[:, None]
        dmajor = 2 * self._sums(b[:, None] * (dx * cos[:, None] + dy * sin[:, None])) / n[:, None]
        col = (da - 0.5 * a[:, None] * (dmajor / np.maximum(major, 1e-12)[:, None])[label]) * norm[:, None]
        # project out what re-fitting each line absorbs (its offset and its angle)
        col = col - (self._sums(col) / n[:, None])[label]
        bb = np.maximum(self._sums(b * b), 1e-12)
        jac = col - b[:, None] * (self._sums(b[:, None] * col) / bb[:, None])[label]
        self._last_jacobian = (k.copy(), residuals, np.concatenate([jac / EDGE_NOISE_PX, prior[1]]))
        return self._last_jacobian[1:]


def _levenberg_marquardt(fun, theta: np.ndarray, iterations: int = 20) -> np.ndarray:
    """Minimise ||fun(theta)||^2; ``fun(theta, jacobian=True)`` also gives the Jacobian."""
    r, jac = fun(theta, jacobian=True)
    cost, damping = r @ r, 1e-3
    for _ in range(iterations):
        a, g = jac.T @ jac, jac.T @ r
        previous = cost
        while True:
            damped = a.copy()
            damped.flat[:: len(a) + 1] += damping * (a.diagonal() + 1e-12)
            delta = -np.linalg.solve(damped, g)
            trial = fun(theta + delta)
            if trial @ trial < cost:
                theta, cost, damping = theta + delta, trial @ trial, damping * 0.3
                break
            damping *= 10
            if damping > 1e10:
                return theta
        if np.abs(delta).max() < 1e-7 or previous - cost < 1e-5 * previous:
            break
        r, jac = fun(theta, jacobian=True)
    return theta


def warp_gap(a: np.ndarray, b: np.ndarray, height: int, width: int) -> float:
    """Mean distance (px) between the ideal positions of a lattice of image points under two
    parameter sets, after the best scale and shift (the alpha = 0 framing removes both)."""
    u, v = np.meshgrid(np.linspace(0, width - 1, 9), np.linspace(0, height - 1, 7))
    pts = np.stack([u.ravel(), v.ravel()], axis=1)
    qa = undistort_px(pts, a, height, width, iterations=12)
    qb = undistort_px(pts, b, height, width, iterations=12)
    qa, qb = qa - qa.mean(axis=0), qb - qb.mean(axis=0)
    scale = (qa * qb).sum() / max((qb * qb).sum(), 1e-12)
    return float(np.linalg.norm(qa - scale * qb, axis=1).mean())


def _plausible_bounds() -> dict[str, tuple[float, float]]:
    """The general regime's lenses (`REGIME_RANGES`), each range widened by `PLAUSIBLE_MARGIN`
    of its ends' sizes (the focal length by half that: the equivalence moves along it); the
    `LOOSE_TERMS` within the model's `PARAM_BOUNDS`."""
    bounds = {}
    for name, (lo, hi) in zip(PARAM_NAMES, REGIME_RANGES["general"]):
        if name in LOOSE_TERMS:
            bounds[name] = PARAM_BOUNDS[name]
            continue
        margin = PLAUSIBLE_MARGIN / 2 if name == "focal" else PLAUSIBLE_MARGIN
        bounds[name] = (lo - margin * abs(lo), hi + margin * abs(hi))
    return bounds


PLAUSIBLE_BOUNDS = _plausible_bounds()


def equivalent_in_bounds(params: np.ndarray) -> np.ndarray | None:
    """The same warp, (f, k1, k2, k3, p1, p2) -> (s f, s^2 k1, s^4 k2, s^6 k3, s p1, s p2), at
    the focal length nearest ``params``' that makes it one of the plausible lenses
    (`PLAUSIBLE_BOUNDS`); None if no focal length does. The fit works at the network's focal
    length, where a wide lens has large coefficients."""
    lo_f, hi_f = PLAUSIBLE_BOUNDS["focal"]
    s = np.concatenate([[1.0], np.geomspace(lo_f / params[5], hi_f / params[5], 400)])
    s = s[np.argsort(np.abs(np.log(s)), kind="stable")]
    power = np.array([2, 4, 6, 1, 1, 1, 0, 0])
    candidates = params[None, :] * s[:, None] ** power[None, :]
    lo, hi = np.array([PLAUSIBLE_BOUNDS[n] for n in PARAM_NAMES]).T
    inside = np.flatnonzero(((candidates >= lo) & (candidates <= hi)).all(axis=1))
    return candidates[inside[0]] if len(inside) else None


def _implausible(params: np.ndarray, reported: np.ndarray | None, height: int, width: int) -> tuple[str, str] | None:
    """(code, reason) if a fitted lens is none of the plausible lenses at any focal length
    (``reported``: `equivalent_in_bounds` of it), or folds the frame."""
    if reported is None:
        return "out_of_bounds", (f"fitted lens (k1 {params[0]:.3f}, k2 {params[1]:.3f}, k3 {params[2]:.3f} at focal {params[5]:.3f}) "
                                 "is not a plausible lens at any focal length: curved objects bent straight")
    # the radial map r -> r (1 + k1 r^2 + k2 r^4 + k3 r^6) must rise up to the farthest corner
    f, cx, cy = camera_px(params, height, width)
    corner = max(np.hypot(x - cx, y - cy) for x in (0, width - 1) for y in (0, height - 1)) / f
    r2 = np.linspace(0, corner**2, 64)
    slope = 1 + 3 * params[0] * r2 + 5 * params[1] * r2**2 + 7 * params[2] * r2**3
    if slope.min() <= 0.2:
        return "not_monotonic", "fitted lens is not monotonic over the frame"
    return None


def _fit(params, lines, height, width, prior, fitted, iterations=20, cost=True, function=None) -> tuple[np.ndarray, float]:
    """Levenberg-Marquardt from ``params`` on the ``fitted`` indices; the fitted parameter set
    and its data cost (sum of squared point residuals, px^2; NaN unless ``cost``).
    ``function``: the `_Straightness` of these arguments, when the caller has made it."""
    function = function or _Straightness(params, lines, height, width, prior, fitted)
    values = _levenberg_marquardt(function, params[list(fitted)], iterations)
    if not cost:
        return _with(params, fitted, values), float("nan")
    residuals = function(values)[: len(function.points)] * EDGE_NOISE_PX
    return _with(params, fitted, values), float(residuals @ residuals)


def _split_half_fits(params, fitted, lines, height, width, prior) -> list[np.ndarray]:
    """The lens refitted to every other line (both halves), each by one Gauss-Newton step from
    ``params``, the fit to all of them: with each line's own offset and angle projected out,
    a half's rows of the Jacobian are the full one's, so one evaluation serves both. On the
    384 validation draws of both regimes (seeds 0 and 1), the halves' warp gap so found was
    within 1.3% (median) of six Levenberg-Marquardt steps per half, and no check decided
    otherwise (177 checks), for ~1/10 of the cost."""
    function = _Straightness(params, lines, height, width, prior, fitted)
    values = params[list(fitted)]
    r, jac = function(values, jacobian=True)
    data = len(function.points)
    halves = []
    for half in (0, 1):
        rows = np.r_[function.label % 2 == half, np.ones(len(r) - data, bool)]  # its lines' points and the prior
        j, rh = jac[rows], r[rows]
        a = j.T @ j
        halves.append(_with(params, fitted, values - np.linalg.solve(a + 1e-3 * np.diag(np.diag(a) + 1e-12), j.T @ rh)))
    return halves


def _f_statistic(cost_restricted: float, cost_free: float, freed: int, spare: int) -> float:
    """F statistic of a model with ``freed`` more parameters: the cost it saves per parameter
    freed, against its remaining cost per ``spare`` observation (lines: points along one edge
    share its texture and JPEG blocks, so they are not independent)."""
    if spare <= 0:
        return 0.0
    return ((cost_restricted - cost_free) / freed) / max(cost_free / spare, 1e-12)


def _evidence(residual_network: np.ndarray, residual_fit: np.ndarray, fitted: int) -> float:
    """How much straighter the lines are under the fitted lens than under the network's."""
    return _f_statistic(float((residual_network**2).sum()), float((residual_fit**2).sum()), fitted, len(residual_fit) - fitted)


def refine_with_lines(photo: np.ndarray | WorkImage, prior: np.ndarray) -> LineFit:
    """Refit the lens of ``prior`` (8 parameters, `PARAM_NAMES` order) to the straight lines of
    a full-resolution greyscale photo ``(H, W)`` uint8 (or its `work_image`). Returns the prior
    when the photo does not support a fit (`LineFit.reason` says why)."""
    work, photo_px = _in_reference_frame(photo if isinstance(photo, WorkImage) else work_image(photo))
    height, width = work.height, work.width
    prior = np.asarray(prior, dtype=np.float64).reshape(8)
    pieces = straight_pieces(edge_chains(work))
    # The radial model is the workload's lens: k3, tangential terms and centre offset zero.
    # The prior centres the full model's extra terms on zero too (the general regime spreads
    # them around zero; the network's values for them carry no information yet).
    network = prior
    params, lines, found, converged, undistorted = _with(prior, NOT_RADIAL, np.zeros(len(NOT_RADIAL))), None, None, False, None
    for round_index, (max_angle, max_offset, max_rms) in enumerate(ROUNDS):
        found, undistorted = _lines(pieces, params, height, width, max_angle, max_offset, undistorted)
        if len(found) < MIN_LINES:
            break
        r = line_residuals(params, found, height, width)
        found = found.subset(r <= min(3 * np.median(r) + 0.5, max_rms))
        if len(found) < MIN_LINES:
            break
        lines = found
        # early rounds only need the lens well enough to join the next round's lines
        converged = round_index == len(ROUNDS) - 1
        if converged:
            params, cost_radial = _fit(params, lines, height, width, prior, RADIAL)
        else:
            params, _ = _fit(params, lines, height, width, prior, RADIAL, ROUND_ITERATIONS, cost=False)  # its cost is not needed
    if lines is None:
        count = 0 if found is None else len(found)
        return LineFit(network, False, "too_few_lines", f"too few straight lines ({count} < {MIN_LINES})", count, float("nan"), float("nan"))
    # Model choice: the five extra terms must cut the residual cost by `FULL_MODEL_GAIN` and
    # pass an F-test with the lines as observations (few lines fit anything), else the
    # centred radial lens (the workload's) is kept. Counting points as independent picks the
    # full model on radial lenses: points along one edge share its texture and JPEG blocks.
    # Both thresholds were set on synthetic pairs of both regimes: a decentred or tangential
    # lens's straightness gains little from the right model while its warp gains much.
    radial = params
    if not converged:  # a later round found too few lines: finish the fit on the last ones
        radial, cost_radial = _fit(params, lines, height, width, prior, RADIAL)
    full_straightness = _Straightness(radial, lines, height, width, prior, FULL)
    use_full = False
    if _full_model_may_pass(full_straightness, radial, cost_radial, len(lines)):
        full, cost_full = _fit(radial, lines, height, width, prior, FULL, function=full_straightness)
        use_full = _full_model_chosen(cost_radial, cost_full, len(lines))
    # The full model, when chosen, must pass the checks too; if it does not (its principal
    # point is the least determined term, so its split halves disagree first), the radial lens
    # is checked in its place: on general-regime scenes it still gets most of the way.
    residual_network = line_residuals(network, lines, height, width)
    before = float(np.median(residual_network)) * photo_px
    failures = []
    for chosen, fitted in ([(full, FULL), (radial, RADIAL)] if use_full else [(radial, RADIAL)]):
        problem, reported, gap, after = _check(chosen, fitted, lines, residual_network, height, width, prior, photo_px)
        model = "full" if fitted == FULL else "radial"
        if problem is None:
            note = f" ({failures[0][1]})" if failures else ""
            return LineFit(reported, True, f"refined_{model}", f"refined, {model} model (halves agree to {gap:.2f} px){note}",
                           len(lines), before, after)
        failures.append((problem[0], f"{model} model: {problem[1]}" if use_full else problem[1]))
    return LineFit(network, False, failures[-1][0], "; ".join(reason for _, reason in failures), len(lines), before, before)


def _full_model_chosen(cost_radial: float, cost_full: float, lines: int) -> bool:
    """The model choice of `refine_with_lines`, from the two fits' data costs (px^2)."""
    f_ratio = _f_statistic(cost_radial, cost_full, len(FULL) - len(RADIAL), lines - len(FULL))
    return f_ratio > FULL_MODEL_F and cost_radial > FULL_MODEL_GAIN * cost_full


def _full_model_may_pass(function: "_Straightness", radial: np.ndarray, cost_radial: float, lines: int) -> bool:
    """Whether the full model could be chosen over the ``radial`` fit: its cost gain predicted by
    one Gauss-Newton step (the Levenberg-Marquardt fit's first Jacobian, which it reuses),
    times `FULL_MODEL_PREDICTION_MARGIN`."""
    r, jac = function(radial[list(FULL)], jacobian=True)
    g, a = jac.T @ r, jac.T @ jac
    gain = float(g @ np.linalg.solve(a + 1e-12 * np.diag(np.diag(a) + 1.0), g)) * EDGE_NOISE_PX**2
    return _full_model_chosen(cost_radial, max(cost_radial - FULL_MODEL_PREDICTION_MARGIN * gain, 1e-12), lines)


def _check(chosen, fitted, lines, residual_network, height, width, prior, photo_px=1.0):
    """(code, reason) of the first acceptance check that a fitted lens fails, or None; the
    lens as reported (`equivalent_in_bounds`), the split halves' warp gap and the median line
    residual under the lens, in the photo's pixels (``photo_px`` per pixel of the reference
    frame the checks work in; the reasons give the limits in the photo's pixels too)."""
    residual_fit, angle, length, centre = _line_geometry(chosen, lines, height, width)
    after = float(np.median(residual_fit))
    reported = equivalent_in_bounds(chosen)
    problem = _implausible(chosen, reported, height, width)
    if problem is None and after > MAX_LINE_RMS_PX:
        problem = "lines_not_straight", (f"the fitted lines stay {after * photo_px:.2f} px from straight (> {round(MAX_LINE_RMS_PX * photo_px, 2)}): "
                                         "not straight edges")
    if problem is None:
        alignment, balance = _one_way(chosen, angle, length, centre, height, width)
        if alignment > MAX_ALIGNMENT and balance < MIN_BALANCE:
            problem = "one_direction", (f"the lines run one way (alignment {alignment:.2f}) on one side of the centre "
                                        f"({balance:.0%} of their length on the other): a texture such as wood grain, not a scene's edges")
    if problem is None and (share := float(np.mean(residual_fit < residual_network))) < MIN_STRAIGHTER_SHARE:
        problem = "few_lines_straighter", (f"only {share:.0%} of the lines get straighter under the fitted lens "
                                           f"(< {MIN_STRAIGHTER_SHARE:.0%}): a few curves bent straight, not the photo's lens")
    if problem is None and (evidence := _evidence(residual_network, residual_fit, len(fitted))) < MIN_EVIDENCE_F:
        problem = "weak_evidence", (f"the lines barely prefer the fitted lens to the network's (F = {evidence:.1f} < {MIN_EVIDENCE_F}): "
                                    "curved objects, not straight edges")
    if problem is None and evidence < MIN_EVIDENCE_F_FAR and (move := warp_gap(chosen, prior, height, width)) > FAR_MOVE_PX:
        problem = "weak_evidence", (f"the fitted lens moves the warp {move * photo_px:.1f} px from the network's, on weak evidence "
                                    f"(F = {evidence:.1f} < {MIN_EVIDENCE_F_FAR} for a move beyond {round(FAR_MOVE_PX * photo_px, 2)} px)")
    gap = float("nan")
    if problem is None:  # split-half check: lines of a real lens agree; curves that the fit bent straight do not
        gap = warp_gap(*_split_half_fits(chosen, fitted, lines, height, width, prior), height, width)
        limit = MAX_HALF_GAP_FULL_PX if fitted == FULL and len(lines) >= MANY_LINES else MAX_HALF_GAP_PX
        if gap > limit:
            problem = "halves_disagree", f"two halves of the lines disagree by {gap * photo_px:.2f} px (> {round(limit * photo_px, 2)}): not a reliable fit"
    return problem, reported, gap * photo_px, after * photo_px


class LineFitPool:
    """`refine_with_lines` in worker processes, or inline in the calling thread. The fit is
    numpy on arrays of a few thousand points, so Python holds the GIL much of the time: two
    threads doing nothing but fits managed 3.5 fits/s against 4.6 for one on 2 cores, and
    processes scale with the cores. Started on first use (spawned: the parent holds ONNX
    Runtime / CUDA threads that must not be forked, so a script that calls
    `lens.runtime.pipeline.run` needs the usual ``if __name__ == "__main__":`` guard); one
    process runs the fit inline. A fit that raises keeps the network's lens."""

    #: Up to this many workers, `for_workers` fits inline: in `lens run` a worker's other
    #: stages (decode, ONNX Runtime, remap, encode) release the GIL, so two workers fitting in
    #: their own threads overlapped well and saved the processes' hand-overs: 11.0-12.5
    #: against 10.3-10.9 images/s on 2 cores (`lens run`, 64 photos, 4 interleaved rounds).
    #: With more workers, fits in threads would queue on the GIL.
    INLINE_WORKERS = 2

    def __init__(self, processes: int):
        self.processes = max(1, processes)
        self._pool = None
        self._lock = threading.Lock()

    @classmethod
    def for_workers(cls, workers: int) -> "LineFitPool":
        return cls(1 if workers <= cls.INLINE_WORKERS else workers)

    def fit(self, photo: np.ndarray | WorkImage, prior: np.ndarray) -> LineFit:
        try:
            if self.processes > 1:
                try:
                    with self._lock:
                        if self._pool is None:
                            self._pool = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                                             initializer=exit_with_parent, initargs=(os.getpid(),))
                    return self._pool.submit(refine_with_lines, photo, prior).result()
                except BrokenProcessPool:
                    # workers could not start (e.g. a calling script without a __main__ guard,
                    # which spawned processes re-import): fit in this process from now on
                    self.processes = 1
            return refine_with_lines(photo, prior)
        except Exception as exc:  # a numerical corner case must not stop a run of thousands
            prior = np.asarray(prior, dtype=np.float64).reshape(8)
            return LineFit(prior, False, "fit_error", f"line fit failed: {type(exc).__name__}: {exc}", 0, float("nan"), float("nan"))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
