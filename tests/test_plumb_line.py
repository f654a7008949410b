"""The line fit (`lens.runtime.plumb_line`) and the torch-free warp it hands to `lens run`
(`lens.runtime.lens_maps`), held to the torch geometry that defines the conventions."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from lens.conventions import PARAM_BOUNDS, PARAM_NAMES
from lens.geometry import grid_safety_stats, lattice_points, optimal_new_camera, parametric_grid, parametric_points
from lens.runtime.lens_maps import alpha0_camera, correction_maps, lattice_safety, undistort_px
from lens.runtime.plumb_line import equivalent_in_bounds, refine_with_lines
from lens.training.batches import VAL_SEED_BASE, load_photo
from lens.training.losses import endpoint_error, warp_points
from lens.training.scenes import render_scene
from lens.training.synth import make_pairs

H, W = 1024, 1536
SAMPLES = Path(__file__).resolve().parents[1] / "samples"
# what the shipped network predicts for most photos (it learned the typical lens)
NETWORK = np.array([-0.122, 0.145, 0.161, -0.001, 0.0, 1.032, 0.0, 0.007])
LENSES = {
    "workload": [-0.27, 0.33, 0, 0, 0, 1.0, 0, 0],
    "decentred": [-0.3, 0.3, 0.02, 0.003, -0.002, 1.1, 0.025, -0.02],
    # at the network's focal length this wide lens has k2 = 1.6, beyond the model's bounds
    "wide": [-0.18, 0.45, 0, 0, 0, 0.75, 0, 0],
}
REFUSED = ("too_few_lines", "one_direction", "few_lines_straighter", "weak_evidence", "halves_disagree", "out_of_bounds", "not_monotonic")


def _distorted(source: np.ndarray, params) -> np.ndarray:
    t = torch.from_numpy(source).permute(2, 0, 1)[None].float()
    distorted, _ = make_pairs(t, torch.tensor([params], dtype=torch.float32), with_target=False)
    return distorted[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()


def _epe(params, true, height=H, width=W) -> float:
    p = torch.tensor(np.asarray(params)[None], dtype=torch.float32)
    t = torch.tensor(np.asarray(true, dtype=np.float64)[None], dtype=torch.float32)
    return float(endpoint_error(warp_points(p, height, width), warp_points(t, height, width), height, width))


def _facade(true, height: int = 1366, width: int = 2048) -> np.ndarray:
    """A held-out facade through the lens ``true``, greyscale; by default at the width the
    fit's thresholds were set at (`lens.runtime.plumb_line.REFERENCE_WIDTH`)."""
    return cv2.cvtColor(_distorted(render_scene(VAL_SEED_BASE + 17, height, width, "facade"), true), cv2.COLOR_RGB2GRAY)


@pytest.mark.parametrize("name, model", [("workload", "refined_radial"), ("decentred", "refined_full"), ("wide", "refined_radial")])
def test_line_fit_recovers_the_lens_of_a_held_out_scene(name, model):
    true = LENSES[name]
    fit = refine_with_lines(_facade(true), NETWORK)
    assert fit.accepted and fit.code == model, fit.reason
    assert fit.lines >= 5
    assert _epe(NETWORK, true, 1366, 2048) > 4.0  # the network's lens is visibly wrong here
    assert _epe(fit.params, true, 1366, 2048) < 1.0
    assert fit.rms_px < fit.rms_prior_px
    # reported as the same warp at a focal length where every term is within the model's bounds
    assert all(PARAM_BOUNDS[n][0] <= v <= PARAM_BOUNDS[n][1] for n, v in zip(PARAM_NAMES, fit.params))


def test_a_lens_far_from_the_networks_is_read_from_a_second_start():
    """A wide lens with strong barrel (general regime, held-out scene): from the network's lens,
    53 px off, the rounds join the wrong pieces and the fit leaves the lines less straight than
    it found them (F < 0); started again from the radial lens that joins the most straight
    length, it reads the lens."""
    true = [-0.35181987285614014, 0.0442034937441349, 0.02152227982878685, 0.0031158835627138615, -0.0034383214078843594,
            0.8090193271636963, -0.003421003697440028, 0.007443681824952364]
    network = [-0.1245, 0.1494, 0.1656, -0.0012, 0.0, 1.0343, 0.0006, 0.0078]  # the shipped model's prediction for it
    grey = cv2.cvtColor(_distorted(render_scene(VAL_SEED_BASE + 5_030_025, 1366, 2048), true), cv2.COLOR_RGB2GRAY)
    fit = refine_with_lines(grey, network)
    assert fit.accepted and "from a second start" in fit.reason and "F = -" in fit.reason, fit.reason
    assert _epe(network, true, 1366, 2048) > 50 and _epe(fit.params, true, 1366, 2048) < 1.0


def test_the_same_photo_at_twice_the_size_gets_the_same_lens():
    # Edges are found at 1024 px whatever the photo's size, so the fit measures in pixels of
    # the photo scaled to 2048 px: counted in the photo's own pixels, its thresholds were half
    # as wide at 4096 px (this pair's warps were 0.09 px apart, and the reported residual grew
    # 1.4x instead of 2x).
    from lens.runtime.plumb_line import warp_gap

    grey = _facade(LENSES["workload"])
    twice = np.repeat(np.repeat(grey, 2, axis=0), 2, axis=1)  # each pixel as 2 x 2: the same picture
    fit, fit_twice = refine_with_lines(grey, NETWORK), refine_with_lines(twice, NETWORK)
    assert fit.accepted and fit_twice.code == fit.code, fit_twice.reason
    assert warp_gap(fit.params, fit_twice.params, 1366, 2048) < 0.05  # px at 2048 (the area reductions round differently)
    assert fit_twice.rms_prior_px / fit.rms_prior_px == pytest.approx(2.0, abs=0.05)  # reported in each photo's pixels


def test_photo_without_straight_lines_keeps_the_network_lens():
    photo = cv2.resize(load_photo("astronaut.jpg"), (W, H), interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(_distorted(photo, LENSES["workload"]), cv2.COLOR_RGB2GRAY)
    fit = refine_with_lines(grey, NETWORK)
    assert not fit.accepted
    assert np.array_equal(fit.params, NETWORK)
    assert fit.reason and fit.code in REFUSED


def test_portrait_whose_curves_a_wrong_lens_straightens_keeps_the_network_lens():
    # A validation draw where the fit bent the flag and the sleeves straight with a lens 33 px
    # off the true one, its halves agreeing; the lines got barely straighter than under the
    # network's lens, and that is what refuses it now.
    true = [-0.2351677, 0.4145354, 0, 0, 0, 1.0, 0, 0]
    photo = cv2.resize(load_photo("astronaut.jpg"), (2048, 1366), interpolation=cv2.INTER_CUBIC)
    fit = refine_with_lines(cv2.cvtColor(_distorted(photo, true), cv2.COLOR_RGB2GRAY), NETWORK)
    assert not fit.accepted and fit.code in REFUSED, fit.reason
    assert np.array_equal(fit.params, NETWORK)


def test_wood_grain_bent_straight_early_is_refused_before_the_last_round(monkeypatch):
    """The coffee photo's wood grain drew the fit to a pincushion lens far beyond any plausible
    one after both early rounds; the last round and the full model's fit then cost ~65 ms of a
    core to reach the same refusal. It is now refused there (the variants: `tools/bench_cpu.py`'s
    photos, shifted and saved as JPEG or not; texture decides which of them go astray)."""
    from lens.runtime.plumb_line import refine

    photo = cv2.resize(cv2.imread(str(SAMPLES / "coffee.jpg")), (2048, 1367), interpolation=cv2.INTER_AREA)
    variants = []
    for shift in (0, 7):
        shifted = np.roll(photo, shift, axis=1)
        variants.append(cv2.cvtColor(shifted, cv2.COLOR_BGR2GRAY))
        variants.append(cv2.imdecode(cv2.imencode(".jpg", shifted, [cv2.IMWRITE_JPEG_QUALITY, 92])[1], cv2.IMREAD_GRAYSCALE))
    early = [refine_with_lines(grey, NETWORK) for grey in variants]
    assert any(fit.reason.endswith("(after 2 of 3 rounds)") for fit in early), [fit.reason for fit in early]
    assert all(not fit.accepted and np.array_equal(fit.params, NETWORK) for fit in early)
    monkeypatch.setattr(refine, "EARLY_IMPLAUSIBLE_ROUNDS", len(refine.ROUNDS))  # never: every round and check
    assert [refine_with_lines(grey, NETWORK).code for grey in variants] == [fit.code for fit in early]


def test_lines_that_run_one_way_on_one_side_keep_the_network_lens():
    # Boards on one side of the frame and nothing else. Wood grain like this, all one way in
    # one corner, was bent straight by a pincushion lens 37 px off the true one on a real
    # photo: parallel lines on one side of the centre cannot tell a lens from a texture that
    # bends alike, so the fit is refused; the same boards across the whole frame are not.
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    board = np.floor((yy * np.cos(np.radians(12)) - xx * np.sin(np.radians(12))) / 70).astype(int)
    shade = rng.integers(60, 200, board.max() - board.min() + 1)[board - board.min()]
    floor = np.clip(shade + rng.normal(0, 6, (H, W)), 0, 255).astype(np.uint8)
    one_side = np.where(yy < 0.4 * H, floor, np.clip(128 + rng.normal(0, 6, (H, W)), 0, 255)).astype(np.uint8)
    fits = [refine_with_lines(cv2.cvtColor(_distorted(np.dstack([image] * 3), LENSES["workload"]), cv2.COLOR_RGB2GRAY), NETWORK)
            for image in (one_side, floor)]
    assert not fits[0].accepted and fits[0].code == "one_direction", fits[0].reason
    assert np.array_equal(fits[0].params, NETWORK)
    assert fits[1].accepted and _epe(fits[1].params, LENSES["workload"]) < 1.0, fits[1].reason


@pytest.mark.parametrize("size", [(1367, 2048), (1001, 1536), (1501, 3100)])
def test_edges_are_placed_at_their_full_resolution_positions(size):
    # Edges are found at about 1024 px wide: halved exactly at 2048 px (the odd last row left
    # out), scaled by 1.5 across and 1001/667 down at 1536 x 1001, a third at 3100 x 1501 (the
    # last column and rows left out). One scale taken from the width for both axes put the
    # bottom edges here 0.92 and 0.48 px too high.
    from lens.runtime.plumb_line import edge_chains, straight_pieces, work_image

    height, width = size
    x_edge, y_edge = width - 300.5, height - 100.5  # steps between two pixel columns / rows
    yy, xx = np.mgrid[0:height, 0:width]
    grey = np.where((xx > x_edge) | (yy > y_edge), 200, 60).astype(np.uint8)
    pieces = straight_pieces(edge_chains(work_image(grey)))
    vertical = (np.abs(pieces.grad[:, 0]) > np.abs(pieces.grad[:, 1]))[pieces.label]  # per point, from its piece's gradient
    assert vertical.sum() > 20 and (~vertical).sum() > 20
    assert np.abs(pieces.points[vertical, 0] - x_edge).max() < 0.1
    assert np.abs(pieces.points[~vertical, 1] - y_edge).max() < 0.1


def test_flat_image_has_no_lines():
    fit = refine_with_lines(np.full((H, W), 128, np.uint8), NETWORK)
    assert not fit.accepted and fit.code == "too_few_lines" and fit.lines == 0


def test_undistortion_inverts_opencv_distortion():
    rng = np.random.default_rng(0)
    for params in ([-0.3, 0.5, 0, 0, 0, 1, 0, 0], [0.2, -0.05, 0.04, 0.004, -0.003, 0.8, 0.03, -0.02]):
        p = np.array(params, np.float64)
        ideal = rng.uniform([100, 80], [W - 100, H - 80], size=(200, 2))
        k = np.array([[p[5] * W, 0, (W - 1) / 2 + p[6] * W], [0, p[5] * W, (H - 1) / 2 + p[7] * W], [0, 0, 1]])
        rays = np.concatenate([(ideal - k[:2, 2]) / k[0, 0], np.ones((200, 1))], axis=1)
        observed, _ = cv2.projectPoints(rays, np.zeros(3), np.zeros(3), k, np.array([p[0], p[1], p[3], p[4], p[2]]))
        assert np.abs(undistort_px(observed.reshape(-1, 2), p, H, W) - ideal).max() < 1e-6


@pytest.mark.parametrize("params", [[-0.25, 0.3, 0, 0, 0, 1, 0, 0], [-0.1, 0.2, 0.03, 0.003, -0.002, 1.3, 0.025, -0.02]])
def test_numpy_warp_matches_the_torch_geometry(params):
    t = torch.tensor([params], dtype=torch.float64)
    camera = optimal_new_camera(t, H, W)[0].numpy()
    assert np.allclose(alpha0_camera(np.array(params), H, W), camera, rtol=1e-7, atol=1e-6)
    map_x, map_y = correction_maps(np.array(params), H, W)
    grid = parametric_grid(t, optimal_new_camera(t, H, W), H, W)[0].numpy()
    px, py = (grid[..., 0] + 1) * (W - 1) / 2, (grid[..., 1] + 1) * (H - 1) / 2
    assert max(np.abs(map_x - px).max(), np.abs(map_y - py).max()) < 0.01
    u, v = lattice_points(H, W, 16, dtype=torch.float64)
    lattice = parametric_points(t, optimal_new_camera(t, H, W), u, v, H, W)
    expected = {k: float(x) for k, x in grid_safety_stats(lattice, None, 1, (H, W)).items()}
    got = lattice_safety(np.array(params), H, W, step=16)
    for key in ("oob_fraction", "border_invalid_fraction", "foldover_fraction"):
        assert got[key] == pytest.approx(expected[key], abs=1e-9)
    for key in ("jacobian_min", "jacobian_p01"):
        assert got[key] == pytest.approx(expected[key], rel=1e-5)


@pytest.mark.parametrize("size", [(8, 8), (200, 300), (1366, 2048), (3000, 4000)])
def test_correction_maps_match_opencv_at_every_size(size):
    # the lattice-and-resize maps against OpenCV's per-pixel ones, for the workload's
    # strongest lens and a general one; tiny images are computed per pixel
    height, width = size
    for params in ([-0.35, 0.6, 0, 0, 0, 1, 0, 0], [0.2, -0.05, 0.04, 0.004, -0.003, 0.8, 0.03, -0.02]):
        p = np.array(params)
        f, cx, cy = p[5] * width, (width - 1) / 2 + p[6] * width, (height - 1) / 2 + p[7] * width
        fx, fy, ncx, ncy = alpha0_camera(p, height, width)
        exact = cv2.initUndistortRectifyMap(np.array([[f, 0, cx], [0, f, cy], [0, 0, 1]]), p[[0, 1, 3, 4, 2]], None,
                                            np.array([[fx, 0, ncx], [0, fy, ncy], [0, 0, 1]]), (width, height), cv2.CV_32FC1)
        got = correction_maps(p, height, width)
        assert got[0].shape == (height, width)
        assert max(np.abs(got[0] - exact[0]).max(), np.abs(got[1] - exact[1]).max()) < 0.01


def test_lens_run_applies_the_line_fit_and_records_it(tmp_path):
    """`lens run` on a distorted facade: the refitted warp replaces the network's, the record
    says so, and the output is closer to the true correction than with `--refine off`."""
    import json

    from typer.testing import CliRunner

    from lens.cli import app

    true = torch.tensor([LENSES["workload"]], dtype=torch.float32)
    source = torch.from_numpy(render_scene(VAL_SEED_BASE + 17, H, W, "facade")).permute(2, 0, 1)[None].float()
    distorted, target = make_pairs(source, true)
    to_u8 = lambda x: x[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()  # noqa: E731
    src = tmp_path / "in"
    src.mkdir()
    cv2.imwrite(str(src / "facade.png"), cv2.cvtColor(to_u8(distorted), cv2.COLOR_RGB2BGR))
    errors = {}
    for refine in ("lines", "off"):
        out = tmp_path / refine
        result = CliRunner().invoke(app, ["run", str(src), str(out), "--refine", refine, "--workers", "2"])
        assert result.exit_code == 0, result.output
        record = json.loads((out / "lens-run" / "images.jsonl").read_text())
        summary = json.loads((out / "lens-run" / "summary.json").read_text())
        corrected = cv2.cvtColor(cv2.imread(str(out / "facade.png")), cv2.COLOR_BGR2RGB)
        errors[refine] = np.abs(corrected.astype(float) - to_u8(target)).mean()
        if refine == "lines":
            assert record["lines"]["applied"] and record["lines"]["code"] == "refined_radial"
            assert record["mode"] == "param_only" and record["network_params"] != record["params"]
            assert abs(record["params"]["k1"] - LENSES["workload"][0]) < 0.03
            assert summary["lines"]["applied"] == 1 and "line fit: 1 of 1" in result.output
        else:
            assert "lines" not in record and summary["lines"] == {"refine": "off (asked for)"}
    assert errors["lines"] < 0.5 * errors["off"], errors
    again = tmp_path / "again"  # the fit is deterministic: same bytes with another thread count
    assert CliRunner().invoke(app, ["run", str(src), str(again), "--workers", "1"]).exit_code == 0
    assert (again / "facade.png").read_bytes() == (tmp_path / "lines" / "facade.png").read_bytes()


def test_where_the_line_fit_replaces_the_warp_the_cpu_graphs_warp_half_is_skipped_and_no_byte_changes(tmp_path):
    """The CPU graph ships as two halves (network; the modes' statistics, choice and warp). With
    the line fit, the warp half runs only for photos whose fit is not applied; the outputs are
    the bytes the whole graph gives, and the record of a refitted photo holds the applied
    warp's statistics."""
    import json

    from lens.runtime.backends import DEFAULT_BUILD, OnnxRuntimeBackend
    from lens.runtime.pipeline import RunOptions, run

    true = torch.tensor([LENSES["workload"]], dtype=torch.float32)
    source = torch.from_numpy(render_scene(VAL_SEED_BASE + 17, H, W, "facade")).permute(2, 0, 1)[None].float()
    distorted, _ = make_pairs(source, true)
    src = tmp_path / "in"
    src.mkdir()
    cv2.imwrite(str(src / "facade.png"), cv2.cvtColor(distorted[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy(), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(src / "portrait.jpg"), cv2.cvtColor(cv2.resize(load_photo("astronaut.jpg"), (W, H)), cv2.COLOR_RGB2BGR))
    backend = OnnxRuntimeBackend(DEFAULT_BUILD, "cpu")
    warped = []
    infer_warp = backend.infer_warp
    backend.infer_warp = lambda network, *a, **k: warped.append(1) or infer_warp(network, *a, **k)
    outputs, records = {}, {}
    for split in (True, False):
        backend.splits_lattice = split
        out = tmp_path / f"split_{split}"
        run(src, out, backend, RunOptions(workers=1, refine="lines"), {})
        outputs[split] = {p.name: p.read_bytes() for p in out.glob("*.*") if p.is_file()}
        records[split] = {r["id"]: r for r in map(json.loads, (out / "lens-run" / "images.jsonl").read_text().splitlines())}
        if split:
            assert len(warped) == 1  # the portrait's; the facade's fit replaced the warp
    assert outputs[True] == outputs[False] and len(outputs[True]) == 2
    facade, portrait = records[True]["facade"], records[True]["portrait"]
    assert facade["lines"]["applied"] and not portrait["lines"]["applied"]
    assert set(facade["safety"]) == {"param_only"} and facade["reasons"] == ["hybrid:replaced_by_line_fit"]
    assert facade["safety"]["param_only"] == records[False]["facade"]["safety"]["param_only"]
    assert facade["mode"] == records[False]["facade"]["mode"] == "param_only" and facade["params"] == records[False]["facade"]["params"]
    assert portrait["safety"] == records[False]["portrait"]["safety"] and portrait["reasons"] == records[False]["portrait"]["reasons"]


def _segments_through(lens, noise_px: float, height: int = 1366, width: int = 2048):
    """16 straight 400-px segments, seeded, seen through ``lens`` with edge noise: the fit's
    lines (`lens.runtime.plumb_line.lines._Lines`)."""
    from lens.geometry import distort
    from lens.runtime.lens_maps import camera_px
    from lens.runtime.plumb_line.lines import _Lines, _moments

    f, cx, cy = camera_px(lens, height, width)
    rng = np.random.default_rng(0)
    points = []
    for _ in range(16):
        centre, angle = rng.uniform([300, 200], [width - 300, height - 200]), rng.uniform(0, np.pi)
        t = np.linspace(-200, 200, 32)
        x, y = (torch.from_numpy((centre[0] + t * np.cos(angle) - cx) / f)[None], torch.from_numpy((centre[1] + t * np.sin(angle) - cy) / f)[None])
        xd, yd = distort(x, y, torch.from_numpy(np.asarray(lens, np.float64))[None])
        points.append(np.stack([xd[0].numpy() * f + cx, yd[0].numpy() * f + cy], axis=1) + rng.normal(0, noise_px, (32, 2)))
    label = np.repeat(np.arange(16), 32)
    _, _, major, _, _ = _moments(np.concatenate(points), label, 16)
    return _Lines(np.concatenate(points), label, np.sqrt(major))


@pytest.mark.parametrize("noise_px, used", [(0.05, True), (0.15, False)])
def test_a_fit_that_moves_the_warp_far_needs_strong_evidence(noise_px, used):
    # The true lens moves the network's warp by 7 px. With clean edges the lines prefer it
    # clearly (F = 27); through more edge noise they prefer it only a little (F = 3.1, above
    # the plain evidence bar of 2): gravel at 4000 px was bent straight like that, 56 px worse
    # than the network's lens, and such a move now needs F >= 5.
    from lens.runtime.plumb_line.acceptance import _check
    from lens.runtime.plumb_line.lines import line_residuals
    from lens.runtime.plumb_line.objective import RADIAL

    true = np.array(LENSES["workload"], float)
    lines = _segments_through(true, noise_px)
    problem = _check(true, RADIAL, lines, line_residuals(NETWORK, lines, 1366, 2048), 1366, 2048, NETWORK)[0]
    if used:
        assert problem is None
    else:
        assert problem[0] == "weak_evidence" and "moves the warp 7.0 px" in problem[1], problem


@pytest.mark.parametrize("processes", [1, 2])
def test_a_failing_fit_keeps_the_network_lens(processes):
    from lens.runtime.plumb_line import LineFitPool

    pool = LineFitPool(processes)
    try:
        fit = pool.fit(np.zeros((4, 4, 4, 4), np.uint8), NETWORK)  # not a greyscale image
        assert fit.code == "fit_error" and not fit.accepted and np.array_equal(fit.params, NETWORK)
        grey = cv2.cvtColor(_distorted(render_scene(VAL_SEED_BASE + 17, H, W, "facade"), LENSES["workload"]), cv2.COLOR_RGB2GRAY)
        assert pool.fit(grey, NETWORK).code == "refined_radial"  # the pool still works after it
    finally:
        pool.close()


def test_a_run_starts_no_more_fit_processes_than_cores():
    # `lens run --workers 8` on 2 cores started 8 spawned processes, each importing numpy and
    # OpenCV for fits that only 2 cores run: 0.88x the speed (and the memory of 6 more)
    from lens.runtime.plumb_line import LineFitPool

    assert LineFitPool.for_workers(8, cores=2).processes == 2
    assert LineFitPool.for_workers(8, cores=16).processes == 8
    assert LineFitPool.for_workers(2, cores=16).processes == 1  # inline: see INLINE_WORKERS
    assert LineFitPool.for_workers(4, cores=1).processes == 1
    # a long run starts them for two workers too: inline fits queue on the GIL (PROCESSES_FROM_IMAGES)
    assert LineFitPool.for_workers(2, cores=2, images=48).processes == 1
    assert LineFitPool.for_workers(2, cores=2, images=96).processes == 2
    assert LineFitPool.for_workers(1, cores=2, images=5000).processes == 1


def test_fitted_lens_is_reported_as_the_same_warp_and_implausible_lenses_are_refused():
    # the fit works at the network's focal length; a wide lens there has large coefficients
    wide_at_network_focal = np.array([-0.3408, 1.6132, 0, 0, 0, 1.032, 0, 0])  # = LENSES["wide"] (f = 0.75)
    reported = equivalent_in_bounds(wide_at_network_focal)
    assert reported is not None and reported[5] != wide_at_network_focal[5]
    assert _epe(reported, wide_at_network_focal) < 1e-3  # the same warp
    # a lens the fit once bent a cat's fur straight with: within the model's bounds at
    # f = 0.70, but no lens of the general regime at any focal length
    assert equivalent_in_bounds(np.array([-1.635, 5.459, 0, 0, 0, 1.032, 0, 0])) is None


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="reads /proc")
def test_fit_processes_exit_when_their_run_is_killed(tmp_path):
    # a run stopped by SIGKILL (a timeout, a stopped pod) cannot shut its pool down; its fit
    # processes used to wait for work forever, one more set per killed run
    import os
    import subprocess
    import sys
    import time

    script = tmp_path / "run.py"
    script.write_text(
        "import os, signal, numpy as np\n"
        "from lens.runtime.plumb_line import LineFitPool\n"
        "if __name__ == '__main__':\n"
        "    pool = LineFitPool(2)\n"
        "    pool.fit(np.full((64, 96), 128, np.uint8), np.zeros(8) + [0, 0, 0, 0, 0, 1, 0, 0])\n"
        f"    open({str(tmp_path / 'pids')!r}, 'w').write(' '.join(map(str, pool._pool._processes)))\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n")
    # no pipes: a surviving child would hold them open
    proc = subprocess.run([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    assert proc.returncode == -9
    children = [int(p) for p in (tmp_path / "pids").read_text().split()]
    assert children

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        with open(f"/proc/{pid}/stat") as f:  # an exited child not yet reaped is a zombie: gone
            return f.read().split(")")[-1].split()[0] != "Z"

    deadline = time.time() + 10
    while time.time() < deadline and any(alive(p) for p in children):
        time.sleep(0.1)
    assert not any(alive(p) for p in children)
