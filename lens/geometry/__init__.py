"""The warp math: pure torch, export-safe, the single source of truth for conventions.

Read in this order: `params` (parameter vector, units, bounds), `camera` (Brown-Conrady,
its inverse, the output camera), `grid` (backward grids, residual fusion), `safety`
(statistics the fallback logic reads).
"""
from lens.geometry.camera import (
    distort,
    intrinsics_px,
    monotonic_radius,
    optimal_new_camera,
    optimal_new_cameras,
    undistort_points,
    zoom_camera,
)
from lens.geometry.grid import (
    distortion_grid,
    distortion_points,
    fuse_residual,
    identity_grid,
    lattice_points,
    normalized_to_pixel,
    parametric_grid,
    parametric_points,
    pixel_to_normalized,
    residual_to_normalized,
    sample,
    upsample_lattice,
)
from lens.geometry.params import (
    IDENTITY,
    NUM_PARAMS,
    PARAM_BOUNDS,
    PARAM_NAMES,
    LensParams,
    conservative_params,
)
from lens.geometry.safety import SAFETY_STATS, grid_safety_stats, jacobian_determinant, stack_stats

__all__ = [
    "IDENTITY",
    "NUM_PARAMS",
    "PARAM_BOUNDS",
    "PARAM_NAMES",
    "SAFETY_STATS",
    "LensParams",
    "conservative_params",
    "distort",
    "distortion_grid",
    "distortion_points",
    "fuse_residual",
    "grid_safety_stats",
    "identity_grid",
    "intrinsics_px",
    "jacobian_determinant",
    "lattice_points",
    "monotonic_radius",
    "normalized_to_pixel",
    "optimal_new_camera",
    "optimal_new_cameras",
    "parametric_grid",
    "parametric_points",
    "pixel_to_normalized",
    "residual_to_normalized",
    "sample",
    "stack_stats",
    "undistort_points",
    "upsample_lattice",
    "zoom_camera",
]
