"""Full-resolution sampling of a fused grid on the CPU with OpenCV.

OpenCV's ``remap`` with fixed-point maps costs ~13 ms for a 2048 x 1367 RGB image on a 2-core
machine against ~276 ms for ONNX Runtime's GridSample and ~527 ms for torch's, and it is the
very sampler ``cv2.undistort`` uses. The grid keeps the single source of truth (it comes from
`lens.geometry`); only the sampling pass is done here.
"""
from __future__ import annotations

import cv2
import numpy as np


def grid_to_maps(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(H, W, 2)`` normalised grid (align_corners=True) -> OpenCV fixed-point maps.

    Fixed-point maps store positions to 1/32 pixel, as ``cv2.initUndistortRectifyMap`` with
    CV_16SC2 does; the rounding is below the grey-level noise of 8-bit images."""
    if grid.ndim != 3 or grid.shape[2] != 2:
        raise ValueError(f"grid must be (H, W, 2), got {grid.shape}")
    height, width = grid.shape[:2]
    map_x = ((grid[..., 0].astype(np.float32) + 1.0) * np.float32((width - 1) / 2)).astype(np.float32)
    map_y = ((grid[..., 1].astype(np.float32) + 1.0) * np.float32((height - 1) / 2)).astype(np.float32)
    return cv2.convertMaps(map_x, map_y, cv2.CV_16SC2)


ALPHA_BAND_ROWS = 256  # rows of an RGBA warp undone from premultiplied colour at a time


def remap(pixels: np.ndarray, maps: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Bilinear backward warp of ``(H, W, C)`` uint8 pixels; samples outside are black (and
    transparent, for RGBA: `_remap_premultiplied`)."""
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        return _remap_premultiplied(pixels, *maps)
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        # OpenCV's vectorised bilinear remap takes 4-channel 8-bit images; 3 channels go a
        # generic way. Padded to 4 and back, the same bytes come out (tests/test_run.py) in
        # less time: a 2048 x 1367 photo with float maps, one thread, OpenCV 5.0: 8.7 against
        # 21 ms for the remap alone; padding, remap and unpadding 0.64-0.66x the plain remap's
        # time (medians of 20 interleaved calls, 1 and 2 threads). OpenCV 4.14: 16 against 20 ms.
        padded = cv2.remap(cv2.cvtColor(pixels, cv2.COLOR_RGB2RGBA), maps[0], maps[1], interpolation=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return cv2.cvtColor(padded, cv2.COLOR_RGBA2RGB)
    out = cv2.remap(pixels, maps[0], maps[1], interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out[..., None] if out.ndim == 2 else out


def _remap_premultiplied(rgba: np.ndarray, map1: np.ndarray, map2: np.ndarray) -> np.ndarray:
    """`remap` of ``(H, W, 4)`` uint8 RGBA with its colour premultiplied by alpha, as
    compositing defines it: interpolating straight colour mixes the colour hidden under
    transparent pixels (often black or stale) into every soft or cut-out edge. uint16 holds
    colour x alpha exactly (at most 255 x 255); the division back is done band by band, so
    the float copy is a band's, not the photo's."""
    alpha = rgba[..., 3].astype(np.uint16)
    source = rgba.astype(np.uint16)
    source[..., :3] *= alpha[..., None]
    source[..., 3] *= 255
    out = np.empty(map1.shape[:2] + (4,), np.uint8)
    for top in range(0, out.shape[0], ALPHA_BAND_ROWS):
        rows = slice(top, min(top + ALPHA_BAND_ROWS, out.shape[0]))
        band = cv2.remap(source, map1[rows], map2[rows], interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0).astype(np.float32)
        weight = band[..., 3:]
        colour = np.where(weight > 0, band[..., :3] * np.float32(255) / np.maximum(weight, np.float32(1)), np.float32(0))
        out[rows, :, :3] = np.clip(np.rint(colour), 0, 255)
        out[rows, :, 3] = np.rint(weight[..., 0] / np.float32(255))
    return out


def warp_with_grid(pixels: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """`remap` ``pixels`` with a normalised ``(H, W, 2)`` grid of the same size."""
    if grid.shape[:2] != pixels.shape[:2]:
        raise ValueError(f"grid {grid.shape[:2]} and image {pixels.shape[:2]} sizes differ")
    return remap(pixels, grid_to_maps(grid))


def warp_with_maps(pixels: np.ndarray, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
    """`remap` with float pixel maps ``(H, W)`` as the CPU graph returns them. Converting them
    to fixed point first (``cv2.convertMaps``) cost ~15% more here (40 interleaved runs at
    2048 x 1367) and rounds differently (up to 2 grey levels apart). Making the fixed-point
    maps band by band from the lattice, so that they are read while still in cache, cost
    0.68-1.07x as much as this in isolation (6 interleaved series at 2048 x 1367 and 4000 x
    3000, median 0.9) but gained nothing inside `lens run` (CPU per image banded / this: median
    1.04 over 11 alternated process pairs, 0.85-1.23)."""
    return remap(pixels, (map_x, map_y))
