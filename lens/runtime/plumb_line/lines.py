"""Pieces joined into long straight lines under a lens (step 2 of `lens.runtime.plumb_line`),
and each line's straightness, direction, length and centre under a lens."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lens.runtime.lens_maps import camera_px, undistort_px
from lens.runtime.plumb_line.edges import _Pieces

MIN_LINE_FRACTION = 0.15  # of the image width
POINTS_PER_LINE = 32
NEWTON_TOLERANCE = 1e-12  # normalised units (~1e-9 px): converged for any later use


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
