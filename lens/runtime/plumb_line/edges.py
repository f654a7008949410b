"""Edges of the photo, linked into chains and split into nearly straight pieces (steps 1-2 of
`lens.runtime.plumb_line`): the photo is area-averaged to its work image, Canny edges are linked
with ``findContours``, each edge pixel moved to the sub-pixel peak of the gradient, and chains
split at corners (Douglas-Peucker)."""
from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

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
        """The gradient magnitude (float32) at these flat pixel indices, computed only where
        the sub-pixel peaks need it."""
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
    # int16 3x3 Sobel gradients: what Canny takes, exact for 8-bit input; both in one pass
    # (spatialGradient: the same values as two cv2.Sobel calls, ~0.4 of their ~2 ms less at
    # 1024 x 683). The magnitude is computed only where it is read (a full-image one cost as
    # much as the gradients)
    gx, gy = cv2.spatialGradient(small)
    # thresholds follow the photo's contrast: a faint grid and a high-contrast facade alike
    # numpy's sqrt, not cv2.magnitude: OpenCV 5.0's gives results 1 ulp apart from one call to
    # the next on the same input (96 of 200 calls), and this threshold decides Canny's edges
    sx, sy = gx[::4, ::4].astype(np.float32), gy[::4, ::4].astype(np.float32)
    high = max(CANNY_FLOOR, _percentile(np.sqrt(sx * sx + sy * sy), CANNY_PERCENTILE))
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
