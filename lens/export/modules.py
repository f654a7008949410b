"""torch modules written to be exported: sizes from shapes, no branches on values, float32.

The image enters as uint8 ``(B, 3, H, W)`` with B, H and W dynamic and leaves as uint8, so a
deployed graph needs no pre- or post-processing outside itself.
"""
from __future__ import annotations

import torch

from lens.geometry import grid_safety_stats, optimal_new_camera, parametric_grid, sample, stack_stats


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """Round float pixel values in [0, 255] to uint8 (half away from zero, as OpenCV does)."""
    return torch.clamp(torch.floor(image + 0.5), 0, 255).to(torch.uint8)


class ParametricWarp(torch.nn.Module):
    """Known lens parameters -> alpha = 0 undistortion of the full-resolution image.

    Inputs: ``image`` uint8 ``(B, 3, H, W)``, ``params`` float32 ``(B, 8)``
    (`lens.geometry.params`). Outputs: the corrected uint8 image, the ``(B, H, W, 2)`` grid and
    the ``(B, 7)`` safety statistics (`lens.geometry.SAFETY_STATS`).
    """

    def __init__(self, jacobian_stride: int = 8):
        super().__init__()
        self.jacobian_stride = jacobian_stride

    def forward(self, image: torch.Tensor, params: torch.Tensor):
        height, width = image.shape[-2], image.shape[-1]
        camera = optimal_new_camera(params, height, width)
        grid = parametric_grid(params, camera, height, width)
        stats = stack_stats(grid_safety_stats(grid, None, self.jacobian_stride))
        corrected = to_uint8(sample(image.to(torch.float32), grid))
        return corrected, grid, stats
