"""Image similarity measures, vectorised with OpenCV and numpy."""
from __future__ import annotations

import cv2
import numpy as np


def to_grey(rgb: np.ndarray, width: int | None = None) -> np.ndarray:
    """float32 grey image, optionally area-resized to ``width`` (aspect kept)."""
    if rgb.ndim == 2:
        grey = rgb
    elif rgb.shape[2] == 1:
        grey = rgb[..., 0]
    else:
        grey = cv2.cvtColor(np.ascontiguousarray(rgb[..., :3]), cv2.COLOR_RGB2GRAY)
    if width and grey.shape[1] != width:
        grey = cv2.resize(grey, (width, max(2, round(grey.shape[0] * width / grey.shape[1]))), interpolation=cv2.INTER_AREA)
    return grey.astype(np.float32)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean structural similarity of two grey images (Wang et al. 2004, Gaussian window 1.5)."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    blur = lambda x: cv2.GaussianBlur(x, (11, 11), 1.5)  # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return float((num / den).mean())
