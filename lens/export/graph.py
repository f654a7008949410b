"""The deployable graph: uint8 image in, corrected image (or its grid) and diagnostics out.

Fallback modes live in ONE graph: it computes the safety statistics of all three modes on a
lattice (every `LATTICE_STEP` pixels; cheap), applies the policy of `lens.runtime.policy` with
tensor operations, and warps with the chosen mode only. A ``mode_override`` input (-1 = automatic,
0/1/2 = force hybrid / param_only / param_only_conservative) lets a user override it. So the
runtime needs one engine per precision and shape profile, never a chain of engines, and a
fallback costs no second inference.

Two variants share everything but their input and last step:

- `LensGraph` (GPU backends): the photo ``image`` (B, 3, H, W) uint8 in; one full-resolution
  grid for the chosen mode and one ``GridSample`` (bilinear, align_corners) -> the corrected
  uint8 image;
- `LensMapsGraph` (CPU backend): every other pixel and row of the photo in, the chosen mode's
  fused grid out on a lattice every 8 pixels, which the runtime enlarges into planar pixel
  maps for OpenCV's ``remap`` (~20x faster than GridSample on a CPU).

Outputs: ``params`` (B, 8) as predicted; ``flow`` (B, 2, h/8, w/8); ``safety`` (B, 3, 7):
`SAFETY_STATS` per mode; ``mode`` (B,) int64 applied; ``violations`` (B, 2) int64 bitmasks
(`lens.runtime.policy.VIOLATIONS`) of the hybrid and param_only modes; then ``corrected``
(B, 3, H, W) uint8 or ``lattice`` (B, 2, rows, cols) float32: for each lattice point
(`lens.runtime.lens_maps.map_lattice_size`), the input pixel ``(x, y)`` to sample.
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
from lens.runtime.lens_maps import MAP_STEP, map_lattice_size
from lens.runtime.policy import SafetyThresholds
from lens.training.model import LensNet, quarter_to_model_input, to_model_input

LATTICE_STEP = 8
SAMPLED_OUTPUTS = ("params", "flow", "safety", "mode", "violations", "corrected")
LATTICE_OUTPUTS = ("params", "flow", "safety", "mode", "violations", "lattice")


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


def _flow_at(flow: torch.Tensor, u: torch.Tensor, v: torch.Tensor, height, width) -> torch.Tensor:
    """The residual ``flow`` as normalised offsets ``(B, rows, cols, 2)`` at output pixels
    ``u`` ``(1, 1, cols)`` and ``v`` ``(1, rows, 1)``, as `fuse_residual` upsamples it (bilinear,
    align_corners; points beyond the border take the border's value). Two small matrix
    products with the bilinear weights: in ONNX Runtime ~20x cheaper than a GridSample at
    the same points (~4 ms for 44 k points at 2048 x 1367)."""
    h, w = flow.shape[-2], flow.shape[-1]
    wx = _bilinear_weights(u.reshape(-1) * ((w - 1) / (width - 1)), w)  # (cols, w)
    wy = _bilinear_weights(v.reshape(-1) * ((h - 1) / (height - 1)), h)  # (rows, h)
    return torch.matmul(torch.matmul(wy, residual_to_normalized(flow)), wx.transpose(0, 1)).permute(0, 2, 3, 1)


def _bilinear_weights(positions: torch.Tensor, size) -> torch.Tensor:
    """``(n, size)`` linear-interpolation weights of samples at ``positions`` along an axis of
    ``size`` samples (clamped to its ends)."""
    j = torch.arange(size, dtype=positions.dtype, device=positions.device)
    return torch.relu(1 - (positions.clamp(0, size - 1).reshape(-1, 1) - j).abs())


class LensGraph(torch.nn.Module):
    def __init__(self, model: LensNet, use_residual: bool = True, thresholds: SafetyThresholds = SafetyThresholds(), half: bool = False):
        super().__init__()
        self.model = model.half() if half else model
        self.half = half
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

    def _decide(self, small: torch.Tensor, height, width, mode_override: torch.Tensor):
        """The network on its input ``small``, the safety statistics of the three modes, and
        the mode chosen: ``(params, flow, safety, chosen, violations)`` as output, and the
        chosen mode's ``(params, camera, flow)``."""
        aspect = torch.ones_like(small[:, 0, 0, 0]) * (height / width)
        if self.half:  # network layers in fp16; the geometry below stays fp32 (a fp16 grid is ~1 px off at 4K)
            params, flow = self.model(small.half(), aspect.half())
            params, flow = params.float(), flow.float()
        else:
            params, flow = self.model(small, aspect)
        if not self.use_residual:
            flow = torch.zeros_like(flow)
        safe = conservative_params(params)

        # The network's and the conservative lens go through the geometry as one batch, and
        # the three modes' grids through the statistics as one: the same values from fewer
        # nodes. Most nodes here work on a few hundred values, where ONNX Runtime's per-node
        # overhead outweighs the arithmetic: at 2048 x 1367 on one thread the CPU graph went
        # from 24.0 to 21.4 ms (median of 5 interleaved rounds).
        both = torch.cat([params, safe])
        cams = optimal_new_camera(both, height, width)
        cam, cam_safe = cams.unflatten(0, (2, -1)).unbind(0)
        g_param, g_cons = self._lattice_grid(both, cams, height, width).unflatten(0, (2, -1)).unbind(0)
        g_hybrid = g_param + self._residual_offsets(flow, height, width)
        no_flow = torch.zeros_like(flow)  # residual statistics of 0, as for no flow at all
        stats = stack_stats(grid_safety_stats(torch.cat([g_hybrid, g_param, g_cons]), torch.cat([flow, no_flow, no_flow]), 1, (height, width)))
        s_hybrid, s_param, s_cons = stats.unflatten(0, (3, -1)).unbind(0)
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
        return (params, flow, safety, chosen, violations), (final_params, final_cam, final_flow)

    def forward(self, image: torch.Tensor, mode_override: torch.Tensor):
        height, width = image.shape[-2], image.shape[-1]
        cfg = self.model.config
        outputs, (final_params, final_cam, final_flow) = self._decide(to_model_input(image, cfg.input_height, cfg.input_width), height, width, mode_override)
        grid = fuse_residual(parametric_grid(final_params, final_cam, height, width), final_flow)
        return *outputs, to_uint8(sample(image.to(torch.float32), grid))

    def decisions(self, image: torch.Tensor, mode_override: torch.Tensor):
        """`forward` up to its warp: the first five outputs, then the chosen mode's lens
        ``(B, 8)``, output camera ``(B, 4)`` and residual flow in normalised units, from which
        `lens.runtime.fused_warp` computes the same fused grid and sampling in one kernel."""
        height, width = image.shape[-2], image.shape[-1]
        cfg = self.model.config
        outputs, (final_params, final_cam, final_flow) = self._decide(to_model_input(image, cfg.input_height, cfg.input_width), height, width, mode_override)
        return *outputs, final_params, final_cam, residual_to_normalized(final_flow)


class LensMapsGraph(LensGraph):
    """The CPU graph: the same network, statistics and mode choice as `LensGraph`, ending in the
    chosen mode's fused grid on a lattice every `MAP_STEP` output pixels, in input pixels, which
    the runtime enlarges into ``cv2.remap`` maps (`lens.runtime.lens_maps.maps_from_lattice`;
    bilinear, as a Resize in the graph would be, but only where the network's warp is used:
    the line fit replaces it with its own).

    Inputs: ``quarter`` ``(B, 3, ceil(H / 2), ceil(W / 2))`` uint8, every other pixel and row of
    the photo (all the network reads; the runtime slices it in numpy: ~2 ms against ~9 ms in
    ONNX Runtime for a 2048 x 1367 photo, and no full-size transpose), ``frame``: an empty
    ``(0, H, W)`` uint8 tensor whose shape is the photo's size (the geometry is at full
    resolution), and ``mode_override``. Graph time at 2048 x 1367 on one thread: ~21 ms
    against ~50 ms for the full image in and full maps out (median of 5 interleaved rounds)."""

    def _residual_offsets(self, flow, height, width):
        # the GridSample of `LensGraph` by matrix products: the same values to float rounding
        # (~1e-6 px), ~4 ms less in ONNX Runtime
        u, v = lattice_points(height, width, LATTICE_STEP, device=flow.device)
        return _flow_at(flow, u, v, height, width)

    def forward(self, quarter: torch.Tensor, frame: torch.Tensor, mode_override: torch.Tensor):
        height, width = frame.shape[-2], frame.shape[-1]
        cfg = self.model.config
        outputs, (final_params, final_cam, final_flow) = self._decide(
            quarter_to_model_input(quarter, cfg.input_height, cfg.input_width), height, width, mode_override)
        rows, cols = map_lattice_size(height, width)  # at `lens.runtime.lens_maps.map_lattice_pixels`
        u = (torch.arange(cols, dtype=torch.float32, device=quarter.device) * MAP_STEP - (MAP_STEP + 1) / 2).reshape(1, 1, -1)
        v = (torch.arange(rows, dtype=torch.float32, device=quarter.device) * MAP_STEP - (MAP_STEP + 1) / 2).reshape(1, -1, 1)
        grid = parametric_points(final_params, final_cam, u, v, height, width) + _flow_at(final_flow, u, v, height, width)
        lattice = torch.stack([normalized_to_pixel(grid[..., 0], width), normalized_to_pixel(grid[..., 1], height)], dim=1)
        return *outputs, lattice
