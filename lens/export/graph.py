"""The deployable graph: uint8 image in, corrected image (or its grid) and diagnostics out.

Fallback modes live in ONE graph: it computes the safety statistics of all three modes on a
lattice (every `LATTICE_STEP` pixels; cheap), applies the policy of `lens.runtime.policy` with
tensor operations, and warps with the chosen mode only. A ``mode_override`` input (-1 = automatic,
0/1/2 = force hybrid / param_only / param_only_conservative) lets a user override it. So the
runtime needs one engine per precision and shape profile, never a chain of engines, and a
fallback costs no second inference.

Two variants share everything but the last step:

- ``sample=True`` (GPU backends): one full-resolution grid for the chosen mode and one
  ``GridSample`` (bilinear, align_corners) -> the corrected uint8 image;
- ``sample=False`` (CPU backend): the chosen mode's fused grid, computed on the lattice and
  upsampled with one bilinear Resize (align_corners; within ~0.05 px of the exact grid), as
  planar pixel maps ready for OpenCV's ``remap`` (~20x faster than GridSample on a CPU; one
  Resize costs ~10 ms at 2048 x 1367 against ~60 for computing the full grid).

Outputs: ``params`` (B, 8) as predicted; ``flow`` (B, 2, h/8, w/8); ``safety`` (B, 3, 7):
`SAFETY_STATS` per mode; ``mode`` (B,) int64 applied; ``violations`` (B, 2) int64 bitmasks
(`lens.runtime.policy.VIOLATIONS`) of the hybrid and param_only modes; then ``corrected``
(B, 3, H, W) uint8 or ``maps`` (B, 2, H, W) float32: for each output pixel, the input pixel
``(x, y)`` to sample.
"""
from __future__ import annotations

import torch

from lens.geometry import (
    conservative_params,
    fuse_residual,
    grid_safety_stats,
    lattice_points,
    normalized_to_pixel,
    optimal_new_camera,
    parametric_grid,
    parametric_points,
    residual_to_normalized,
    sample,
    stack_stats,
)
from lens.export.modules import to_uint8
from lens.runtime.policy import SafetyThresholds
from lens.training.model import LensNet, to_model_input

LATTICE_STEP = 8
SAMPLED_OUTPUTS = ("params", "flow", "safety", "mode", "violations", "corrected")
MAPS_OUTPUTS = ("params", "flow", "safety", "mode", "violations", "maps")


def _violation_mask(stats: torch.Tensor, t: SafetyThresholds, check_residual: bool) -> torch.Tensor:
    """(B, 7) stats in SAFETY_STATS order -> (B,) int64 bitmask, bits as policy.VIOLATIONS."""
    bits = [
        stats[:, 0] > t.max_oob_fraction,
        stats[:, 1] > t.max_border_invalid_fraction,
        stats[:, 4] > t.max_foldover_fraction,
        stats[:, 3] < t.min_jacobian_p01,
    ]
    if check_residual:
        bits.append(stats[:, 6] > t.max_residual_px)
    return sum(b.to(torch.int64) * (1 << i) for i, b in enumerate(bits))


class LensGraph(torch.nn.Module):
    def __init__(self, model: LensNet, sample_image: bool = True, use_residual: bool = True,
                 thresholds: SafetyThresholds = SafetyThresholds(), half: bool = False):
        super().__init__()
        self.model = model.half() if half else model
        self.half = half
        self.sample_image = sample_image
        self.use_residual = use_residual
        self.t = thresholds

    def _residual_offsets(self, flow, height, width):
        """The residual flow's normalised offsets at the lattice points, ``(B, rows, cols, 2)``."""
        u, v = lattice_points(height, width, LATTICE_STEP, device=flow.device)
        lattice = torch.stack(torch.broadcast_tensors(u * (2.0 / (width - 1)) - 1, v * (2.0 / (height - 1)) - 1), dim=-1)
        lattice = lattice.expand(flow.shape[0], -1, -1, -1)
        offsets = torch.nn.functional.grid_sample(residual_to_normalized(flow), lattice, mode="bilinear", align_corners=True)
        return offsets.permute(0, 2, 3, 1)

    def _lattice_grid(self, params, camera, height, width):
        u, v = lattice_points(height, width, LATTICE_STEP, device=params.device)
        return parametric_points(params, camera, u, v, height, width)

    def forward(self, image: torch.Tensor, mode_override: torch.Tensor):
        height, width = image.shape[-2], image.shape[-1]
        cfg = self.model.config
        small = to_model_input(image, cfg.input_height, cfg.input_width)
        aspect = torch.ones_like(small[:, 0, 0, 0]) * (height / width)
        if self.half:  # network layers in fp16; the geometry below stays fp32 (a fp16 grid is ~1 px off at 4K)
            params, flow = self.model(small.half(), aspect.half())
            params, flow = params.float(), flow.float()
        else:
            params, flow = self.model(small, aspect)
        if not self.use_residual:
            flow = torch.zeros_like(flow)
        safe = conservative_params(params)

        size = (height, width)
        cam, cam_safe = optimal_new_camera(params, height, width), optimal_new_camera(safe, height, width)
        g_param = self._lattice_grid(params, cam, height, width)
        offsets = self._residual_offsets(flow, height, width)
        g_hybrid = g_param + offsets
        g_cons = self._lattice_grid(safe, cam_safe, height, width)
        s_hybrid = stack_stats(grid_safety_stats(g_hybrid, flow, 1, size))
        s_param = stack_stats(grid_safety_stats(g_param, None, 1, size))
        s_cons = stack_stats(grid_safety_stats(g_cons, None, 1, size))
        m_hybrid = _violation_mask(s_hybrid, self.t, True)
        m_param = _violation_mask(s_param, self.t, False)

        one = torch.ones_like(m_hybrid)
        hybrid_ok = (m_hybrid == 0) & torch.full_like(m_hybrid, int(self.use_residual)).bool()
        auto = torch.where(hybrid_ok, 0 * one, torch.where(m_param == 0, one, 2 * one))
        chosen = torch.where(mode_override < 0, auto, torch.clamp(mode_override, 0, 2))
        safety = torch.stack([s_hybrid, s_param, s_cons], dim=1)
        violations = torch.stack([m_hybrid, m_param], dim=1)

        is_cons = (chosen == 2).to(torch.float32).reshape(-1, 1)
        final_params = params * (1 - is_cons) + safe * is_cons
        final_cam = cam * (1 - is_cons) + cam_safe * is_cons
        final_flow = flow * (chosen == 0).to(torch.float32).reshape(-1, 1, 1, 1)
        if self.sample_image:
            grid = fuse_residual(parametric_grid(final_params, final_cam, height, width), final_flow)
            return params, flow, safety, chosen, violations, to_uint8(sample(image.to(torch.float32), grid))
        is_cons4 = is_cons.reshape(-1, 1, 1, 1)
        lattice = g_param * (1 - is_cons4) + g_cons * is_cons4 + offsets * (chosen == 0).to(torch.float32).reshape(-1, 1, 1, 1)
        lattice_px = torch.stack([normalized_to_pixel(lattice[..., 0], width), normalized_to_pixel(lattice[..., 1], height)], dim=1)
        maps = torch.nn.functional.interpolate(lattice_px, size=(height, width), mode="bilinear", align_corners=True)
        return params, flow, safety, chosen, violations, maps
