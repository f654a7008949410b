import cv2
import numpy as np
import pytest
import torch

from lens.geometry import (
    LensParams,
    distort,
    distortion_grid,
    fuse_residual,
    grid_safety_stats,
    identity_grid,
    monotonic_radius,
    normalized_to_pixel,
    optimal_new_camera,
    parametric_grid,
    undistort_points,
    zoom_camera,
)
from lens.runtime.sampling import warp_with_grid

W, H = 2048, 1367

# Workload-like, pincushion, tangential + offset + other focal, strong barrel.
CASES = [
    LensParams(k1=-0.2, k2=0.4),
    LensParams(k1=0.15, k2=-0.05),
    LensParams(k1=-0.25, k2=0.3, k3=0.05, p1=0.004, p2=-0.003, focal=0.8, cx=0.02, cy=-0.015),
    LensParams(k1=-0.35),
]


def _opencv(p: LensParams, width=W, height=H):
    return np.array(p.camera_matrix(width, height)), np.array(p.opencv_dist_coeffs())


def _grid_px(grid):
    return (normalized_to_pixel(grid[0, ..., 0], W).double().numpy(), normalized_to_pixel(grid[0, ..., 1], H).double().numpy())


def test_zero_coefficients_give_identity_grid_and_untouched_pixels():
    params = LensParams().to_tensor()
    cam = optimal_new_camera(params.double(), H, W).float()
    grid = parametric_grid(params, cam, H, W)
    assert torch.allclose(cam, torch.tensor([[W, W, (W - 1) / 2, (H - 1) / 2]], dtype=torch.float32))
    assert (grid - identity_grid(1, H, W)).abs().max().item() <= 2.5e-7  # float32 rounding only
    pixels = np.random.default_rng(0).integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    assert np.array_equal(warp_with_grid(pixels, grid[0].numpy()), pixels)


@pytest.mark.parametrize("p", CASES, ids=["workload", "pincushion", "tangential-offset", "strong-barrel"])
def test_inverse_then_forward_returns_start_point(p):
    params = p.to_tensor().double()
    r_valid = monotonic_radius(params).item()
    f_px = p.focal * W
    # Ideal points covering the image with a 30% margin, within the valid (monotonic) radius.
    corner = np.hypot(0.5 + abs(p.cx), 0.5 * H / W + abs(p.cy)) / p.focal
    angles = torch.linspace(0, 2 * np.pi, 97, dtype=torch.float64)
    radii = torch.linspace(0, min(r_valid * 0.999, 1.3 * corner), 200, dtype=torch.float64)
    x = (radii[:, None] * torch.cos(angles)).reshape(1, -1)
    y = (radii[:, None] * torch.sin(angles)).reshape(1, -1)
    xd, yd = distort(x, y, params)
    xu, yu, valid = undistort_points(xd, yd, params)
    assert valid.all()
    x2, y2 = distort(xu, yu, params)
    err_px = torch.sqrt((x2 - xd) ** 2 + (y2 - yd) ** 2).max().item() * f_px
    assert err_px < 1e-3
    assert (torch.sqrt((xu - x) ** 2 + (yu - y) ** 2).max().item() * f_px) < 1e-3


def test_inverse_flags_points_the_lens_cannot_produce():
    params = LensParams(k1=-0.35).to_tensor().double()
    r_valid = monotonic_radius(params)
    assert abs(r_valid.item() - 1 / np.sqrt(1.05)) < 2e-3  # d/dr r(1 - 0.35 r^2) = 0
    rd_max = r_valid * (1 - 0.35 * r_valid**2)
    xd = torch.tensor([[0.1, rd_max.item() * 1.2]], dtype=torch.float64)
    _, _, valid = undistort_points(xd, torch.zeros_like(xd), params)
    assert valid.tolist() == [[True, False]]


@pytest.mark.parametrize("p", CASES, ids=["workload", "pincushion", "tangential-offset", "strong-barrel"])
@pytest.mark.parametrize("framing", ["alpha0", "alpha1", "zoom"])
def test_grid_matches_opencv_undistort_rectify_map(p, framing):
    params = p.to_tensor()
    if framing == "zoom":
        cam = zoom_camera(params, H, W, 1.1)
    else:
        cam = optimal_new_camera(params.double(), H, W, alpha=1.0 if framing == "alpha1" else 0.0).float()
    fx, fy, ncx, ncy = cam[0].double().tolist()
    K, D = _opencv(p)
    new_k = np.array([[fx, 0, ncx], [0, fy, ncy], [0, 0, 1]])
    map_x, map_y = cv2.initUndistortRectifyMap(K, D, None, new_k, (W, H), cv2.CV_32FC1)
    px, py = _grid_px(parametric_grid(params, cam, H, W))
    assert np.abs(px - map_x).max() < 0.01
    assert np.abs(py - map_y).max() < 0.01


def _opencv_converges(K, D, width, height) -> bool:
    """OpenCV's getOptimalNewCameraMatrix inverts the lens with 5 fixed-point iterations,
    which do not converge for strong distortion at wide angles; compare only where they do."""
    pts = np.array([[x * (width - 1) / 8, y * (height - 1) / 8] for y in range(9) for x in range(9)]).reshape(-1, 1, 2)
    five = cv2.undistortPoints(pts, K, D, criteria=(cv2.TERM_CRITERIA_COUNT, 5, 0))
    many = cv2.undistortPoints(pts, K, D, criteria=(cv2.TERM_CRITERIA_COUNT, 200, 0))
    return np.abs(five - many).max() < 1e-5


@pytest.mark.parametrize("p", CASES, ids=["workload", "pincushion", "tangential-offset", "strong-barrel"])
@pytest.mark.parametrize("size", [(W, H), (2048, 1530), (1366, 2048)])
def test_alpha0_camera_matches_opencv_and_is_the_widest_view_without_black_border(p, size):
    width, height = size
    params = p.to_tensor()
    K, D = _opencv(p, width, height)
    edge = np.array([[0, 0], [width - 1, 0], [0, height - 1], [width - 1, height - 1], [0, (height - 1) / 2], [(width - 1) / 2, 0]])
    xd = torch.tensor((edge[:, 0] - K[0, 2]) / K[0, 0])[None]
    yd = torch.tensor((edge[:, 1] - K[1, 2]) / K[1, 1])[None]
    if not undistort_points(xd, yd, params.double())[2].all():
        pytest.skip("the image border lies beyond what this lens can produce: alpha = 0 is undefined")
    cam = optimal_new_camera(params, height, width)
    if _opencv_converges(K, D, width, height):
        new_k, _ = cv2.getOptimalNewCameraMatrix(K, D, (width, height), 0)
        ours = cam[0].double().numpy()
        theirs = np.array([new_k[0, 0], new_k[1, 1], new_k[0, 2], new_k[1, 2]])
        assert np.all(np.abs(ours / theirs - 1) < 0.005), (ours, theirs)
    stats = grid_safety_stats(parametric_grid(params, cam, height, width))
    assert stats["oob_fraction"].item() == 0.0
    assert stats["border_invalid_fraction"].item() == 0.0
    assert stats["foldover_fraction"].item() == 0.0
    wider = cam * torch.tensor([0.995, 0.995, 1.0, 1.0])  # 0.5% more field of view on both axes
    assert grid_safety_stats(parametric_grid(params, wider, height, width))["border_invalid_fraction"].item() > 0


def test_opencv_comparison_covers_the_workload():
    K, D = _opencv(CASES[0])
    assert _opencv_converges(K, D, W, H)


def test_batch_elements_are_independent():
    stacked = torch.cat([c.to_tensor() for c in CASES])
    cams = optimal_new_camera(stacked, 96, 128)
    grids = parametric_grid(stacked, cams, 96, 128)
    for i, c in enumerate(CASES):
        single = parametric_grid(c.to_tensor(), optimal_new_camera(c.to_tensor(), 96, 128), 96, 128)
        assert torch.allclose(grids[i : i + 1], single, atol=1e-6)


def test_residual_flow_is_in_its_own_pixels_and_fused_bilinearly():
    grid = identity_grid(1, 97, 129)
    flow = torch.zeros(1, 2, 13, 17)
    flow[:, 0] = 1.0  # one flow pixel to the right = (129 - 1) / (17 - 1) = 8 image pixels
    flow[:, 1, :, :] = torch.linspace(0, 2, 17)  # dy grows left to right, 0..2 flow pixels
    fused = fuse_residual(grid, flow)
    shift_x = normalized_to_pixel(fused[0, ..., 0], 129) - normalized_to_pixel(grid[0, ..., 0], 129)
    shift_y = normalized_to_pixel(fused[0, ..., 1], 97) - normalized_to_pixel(grid[0, ..., 1], 97)
    assert torch.allclose(shift_x, torch.full_like(shift_x, 8.0), atol=1e-4)
    # dy of 2 flow pixels at the right edge = 2 * (97 - 1) / (13 - 1) = 16 image pixels, linear in x.
    assert torch.allclose(shift_y[:, -1], torch.full((97,), 16.0), atol=1e-4)
    assert torch.allclose(shift_y[5], torch.linspace(0, 16, 129), atol=1e-3)


def test_safety_stats_flag_a_planted_foldover_and_black_border():
    grid = identity_grid(1, 120, 160)
    clean = grid_safety_stats(grid)
    assert clean["foldover_fraction"].item() == 0.0
    assert abs(clean["jacobian_min"].item() - 1.0) < 1e-4
    assert clean["oob_fraction"].item() == 0.0

    flow = torch.zeros(1, 2, 16, 21)
    flow[0, 0, 6:10, 8:12] = -3.0  # a block of samples pushed 24 px left: the warp folds over
    folded = grid_safety_stats(fuse_residual(grid, flow), flow)
    assert folded["foldover_fraction"].item() > 0.005
    assert folded["jacobian_min"].item() < 0
    assert folded["jacobian_p01"].item() < 1.0
    assert abs(folded["residual_max_px"].item() - 3.0 * 159 / 20) < 1e-3

    zoomed_out = zoom_camera(LensParams().to_tensor(), 120, 160, 0.9)  # shows black margins
    border = grid_safety_stats(parametric_grid(LensParams().to_tensor(), zoomed_out, 120, 160))
    assert border["border_invalid_fraction"].item() == 1.0
    assert 0.15 < border["oob_fraction"].item() < 0.25  # 1 - 0.9^2 = 0.19


def test_params_round_trip_pixels_and_validation():
    p = LensParams.from_pixels(2000, 1000, k1=-0.1, focal_px=1800, cx_px=1010, cy_px=480)
    K = p.camera_matrix(2000, 1000)
    assert np.allclose([K[0][0], K[0][2], K[1][2]], [1800, 1010, 480])
    assert LensParams.from_sequence(p.as_tuple()) == p
    with pytest.raises(ValueError, match="focal"):
        LensParams(focal=0.0)
    with pytest.raises(ValueError, match="finite"):
        LensParams(k1=float("nan"))


def test_distortion_grid_inverts_the_correction_grid():
    p = CASES[2].to_tensor().double()
    cam = optimal_new_camera(p, H, W)
    forward = parametric_grid(p, cam, H, W)  # corrected pixel -> distorted image
    backward, valid = distortion_grid(p, cam, H, W)  # distorted pixel -> corrected image
    assert valid.all()
    # Follow corrected -> distorted -> corrected on a sparse set of interior pixels.
    sub = forward[:, 100:-100:97, 100:-100:89]
    round_trip = torch.nn.functional.grid_sample(backward.permute(0, 3, 1, 2), sub, align_corners=True)
    ident = identity_grid(1, H, W, torch.float64)[:, 100:-100:97, 100:-100:89].permute(0, 3, 1, 2)
    err_px = (round_trip - ident).abs().amax().item() * (W - 1) / 2
    assert err_px < 0.05  # bilinear interpolation of a smooth map between pixel centres


def test_implicit_gradient_of_the_output_camera_matches_full_backprop():
    from lens.training.synth import sample_params

    p = sample_params("general", 8, np.random.default_rng(0), 1367, 2048).double().requires_grad_(True)
    weights = torch.randn(8, 4, dtype=torch.float64)
    grads = []
    for implicit in (False, True):
        cam = optimal_new_camera(p, 1367, 2048, implicit_grad=implicit)
        grads.append((cam, torch.autograd.grad((cam * weights).sum(), p)[0]))
    assert torch.equal(grads[0][0], grads[1][0])  # same values
    assert torch.allclose(grads[0][1], grads[1][1], rtol=1e-9, atol=1e-9)
