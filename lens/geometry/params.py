"""The lens parameter vector: order, units and bounds, stated once.

Every tensor of lens parameters in `lens` is ``(B, 8)`` float32 in this order:

===== ======= ======================================================= ===============
index name    meaning                                                 bounds (model)
===== ======= ======================================================= ===============
0     k1      radial Brown-Conrady coefficient of r^2                 [-0.8, 0.8]
1     k2      radial coefficient of r^4                               [-0.8, 1.2]
2     k3      radial coefficient of r^6                               [-1.0, 1.0]
3     p1      tangential coefficient (OpenCV's p1)                    [-0.02, 0.02]
4     p2      tangential coefficient (OpenCV's p2)                    [-0.02, 0.02]
5     focal   focal length f, in units of the image width             [0.4, 3.0]
6     cx      principal-point offset from the image centre, x, in     [-0.1, 0.1]
              units of the image width
7     cy      principal-point offset from the image centre, y, in     [-0.1, 0.1]
              units of the image width
===== ======= ======================================================= ===============

Width-relative units make a parameter set independent of resolution: the model sees a
downscaled image and the warp is applied at full resolution with the same numbers.
In pixels (OpenCV's K): ``f_px = focal * W``, ``cx_px = (W - 1) / 2 + cx * W``,
``cy_px = (H - 1) / 2 + cy * W``. The coefficients act on normalised camera coordinates
``x = (u - cx_px) / f_px`` exactly as in ``cv2.initUndistortRectifyMap``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Sequence

import torch

from lens.conventions import PARAM_BOUNDS, PARAM_NAMES  # noqa: F401 (PARAM_BOUNDS re-exported here); torch-free, shared with the runtime

NUM_PARAMS = len(PARAM_NAMES)

#: The identity parameter set: no distortion, f = W, centred.
IDENTITY = (0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0)


@dataclass(frozen=True)
class LensParams:
    """One parameter set in the documented units (module docstring)."""

    k1: float = 0.0
    k2: float = 0.0
    k3: float = 0.0
    p1: float = 0.0
    p2: float = 0.0
    focal: float = 1.0
    cx: float = 0.0
    cy: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = float(getattr(self, f.name))
            if v != v or v in (float("inf"), float("-inf")):
                raise ValueError(f"lens parameter {f.name} must be finite, got {v}")
        if self.focal <= 0:
            raise ValueError(f"focal must be positive (units of image width), got {self.focal}")

    @classmethod
    def from_pixels(
        cls,
        width: int,
        height: int,
        *,
        k1: float = 0.0,
        k2: float = 0.0,
        k3: float = 0.0,
        p1: float = 0.0,
        p2: float = 0.0,
        focal_px: float | None = None,
        cx_px: float | None = None,
        cy_px: float | None = None,
    ) -> "LensParams":
        """Build from OpenCV-style pixel intrinsics; omitted ones take the defaults
        (f = width, principal point at the image centre ((W-1)/2, (H-1)/2))."""
        focal = 1.0 if focal_px is None else focal_px / width
        cx = 0.0 if cx_px is None else (cx_px - (width - 1) / 2) / width
        cy = 0.0 if cy_px is None else (cy_px - (height - 1) / 2) / width
        return cls(k1, k2, k3, p1, p2, focal, cx, cy)

    def camera_matrix(self, width: int, height: int) -> list[list[float]]:
        """OpenCV's 3x3 K for an image of this size."""
        f = self.focal * width
        return [
            [f, 0.0, (width - 1) / 2 + self.cx * width],
            [0.0, f, (height - 1) / 2 + self.cy * width],
            [0.0, 0.0, 1.0],
        ]

    def opencv_dist_coeffs(self) -> list[float]:
        """OpenCV's distortion vector order: (k1, k2, p1, p2, k3)."""
        return [self.k1, self.k2, self.p1, self.p2, self.k3]

    def as_tuple(self) -> tuple[float, ...]:
        return tuple(float(getattr(self, n)) for n in PARAM_NAMES)

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    def to_tensor(self, batch: int = 1) -> torch.Tensor:
        """``(batch, 8)`` float32 tensor in `PARAM_NAMES` order."""
        return torch.tensor([self.as_tuple()] * batch, dtype=torch.float32)

    @classmethod
    def from_sequence(cls, values: Sequence[float]) -> "LensParams":
        if len(values) != NUM_PARAMS:
            raise ValueError(f"expected {NUM_PARAMS} values {PARAM_NAMES}, got {len(values)}")
        return cls(*(float(v) for v in values))


# The conservative fallback's box. With k3 = p1 = p2 = 0, k1 >= -0.12 and 0 <= k2, the radial
# map's slope 1 + 3 k1 r^2 + 5 k2 r^4 stays >= 0.48 for r^2 <= 1.44; focal >= 0.8 widths and
# offsets <= 0.02 keep every corner of frames up to 2:3 portrait inside r^2 = 1.35. A monotonic
# radial map cannot fold, and alpha = 0 framing leaves no black border: safe by construction.
CONSERVATIVE_BOX = {"k1": (-0.12, 0.2), "k2": (0.0, 0.3), "focal": (0.8, 1.5), "cx": (-0.02, 0.02), "cy": (-0.02, 0.02)}
CONSERVATIVE_SHRINK = 0.5


def conservative_params(params: torch.Tensor) -> torch.Tensor:
    """``(B, 8)`` -> the milder, provably safe parameter set of the
    ``param_only_conservative`` mode: radial terms halved and clamped to `CONSERVATIVE_BOX`,
    k3 and tangential terms dropped (export-safe)."""
    k1 = torch.clamp(params[:, 0:1] * CONSERVATIVE_SHRINK, *CONSERVATIVE_BOX["k1"])
    k2 = torch.clamp(params[:, 1:2] * CONSERVATIVE_SHRINK, *CONSERVATIVE_BOX["k2"])
    zeros = torch.zeros_like(params[:, 2:5])
    focal = torch.clamp(params[:, 5:6], *CONSERVATIVE_BOX["focal"])
    cx = torch.clamp(params[:, 6:7], *CONSERVATIVE_BOX["cx"])
    cy = torch.clamp(params[:, 7:8], *CONSERVATIVE_BOX["cy"])
    return torch.cat([k1, k2, zeros, focal, cx, cy], dim=1)
