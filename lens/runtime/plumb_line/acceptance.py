"""Whether a fitted lens may replace the network's (`_check`, used by `lens.runtime.plumb_line`'s
`refine_with_lines`): it must be a plausible lens, straighten the lines it was fitted to, most of
them, with lines on both sides of the centre, by more than its freedom explains, and two halves
of the lines must agree on it. Every threshold below was set on synthetic scenes of both regimes
and checked on real photos (`tools/line_fit_photos.py`)."""
from __future__ import annotations

import numpy as np

from lens.conventions import PARAM_BOUNDS, PARAM_NAMES, REGIME_RANGES
from lens.runtime.lens_maps import camera_px, undistort_px
from lens.runtime.plumb_line.lines import _line_geometry, _one_way
from lens.runtime.plumb_line.objective import FULL, _split_half_fits

# Plausible lenses: the general regime's, widened by this share (`_plausible_bounds`); a fit
# outside them at every focal length is refused. The model's own `PARAM_BOUNDS` are wider:
# the fit bent a cat's fur and whiskers straight with k1 = -1.6, k2 = 5.5 (at f = 1.03), a lens
# inside them at f = 0.70 and 70 px from the true one. The principal point is held only to the
# model's bounds (`LOOSE_TERMS`): lines pin it down poorly and it trades against the tangential
# terms, so good full-model warps had a centre beyond the regime's (0.4 px off the true warp
# where the radial lens was 5.6 px off); on the validation draws, mean EPE of the general
# regime 2.56 -> 2.50 px (seed 0) and 2.76 -> 2.73 (seed 1), no fit used on real line-free
# photos. Freeing the tangential terms as well was worse on seed 1 (a fit 5.5 px off).
PLAUSIBLE_MARGIN = 0.25
LOOSE_TERMS = ("cx", "cy")
MAX_HALF_GAP_PX = 3.0
# With many lines, the full model's halves disagree mostly on the principal point, which half
# the lines pin down poorly; the fit on all of them was 0.8-3.3 px from the true lens on
# validation scenes whose halves disagreed by 3-7 px, where the radial lens was 1.3-12 px off.
MANY_LINES, MAX_HALF_GAP_FULL_PX = 30, 8.0
# The fit must explain its change (`_evidence`): a portrait's lines (a flag, a sleeve) were
# bent straight-ish by a lens 16 px from the network's and 33 px from the true one, getting
# only 14% straighter (F = 0.7). On 128 synthetic validation scenes, every other fit below
# F = 3 moved the warp by under 2 px.
MIN_EVIDENCE_F = 2.0
# A fit that moves the warp far from the network's needs more: gravel at 4000 px (9 lines, two
# of them texture joined across the frame) got 18% straighter (F = 2.6) under a lens that moved
# the warp 20 px, 56 px worse than the network's. On 450 fits used on synthetic validation draws
# (1536 to 6000 px, both regimes) every fit that moved the warp by more than `FAR_MOVE_PX` had
# F >= 6.6 (5th percentile 38), and every fit with F < 5 moved it by under 3.7 px.
FAR_MOVE_PX, MIN_EVIDENCE_F_FAR = 5.0, 5.0
# Textures that passed the other checks on real photos (`tools/line_fit_photos.py`): wood
# grain, its lines all one way in one corner, that a pincushion lens bent straight (37 px off
# the true lens); and grass or grain where one or two blades carried all the evidence while
# most lines got less straight. A lens bends parallel lines on opposite sides of its centre
# in opposite ways, a texture all alike: lines that run one way (`_one_way`: alignment above
# `MAX_ALIGNMENT`) must lie on both sides (at least `MIN_BALANCE` of their length on the
# lesser one). Grain: alignment 0.97-0.99, balance 0.11-0.15; a launch pad's towers, all
# vertical: alignment up to 0.98, balance 0.33-0.50. On 166 fits used on synthetic validation
# scenes the alignment was at most 0.87, and the share of lines that got straighter at least
# 0.5 (`MIN_STRAIGHTER_SHARE`).
MAX_ALIGNMENT, MIN_BALANCE = 0.9, 0.25
MIN_STRAIGHTER_SHARE = 0.5
# median over the fitted lines: synthetic edges fit to 0.05-0.3 px, a real brick wall (512 px,
# upscaled 4x) to 0.48-0.67; at 0.6 px 6 of 16 good fits there were refused (network 6-28 px
# off, fit 0.4-2.6); texture that fits this well is refused by the checks after this one
MAX_LINE_RMS_PX = 0.8


def warp_gap(a: np.ndarray, b: np.ndarray, height: int, width: int) -> float:
    """Mean distance (px) between the ideal positions of a lattice of image points under two
    parameter sets, after the best scale and shift (the alpha = 0 framing removes both)."""
    u, v = np.meshgrid(np.linspace(0, width - 1, 9), np.linspace(0, height - 1, 7))
    pts = np.stack([u.ravel(), v.ravel()], axis=1)
    qa = undistort_px(pts, a, height, width, iterations=12)
    qb = undistort_px(pts, b, height, width, iterations=12)
    qa, qb = qa - qa.mean(axis=0), qb - qb.mean(axis=0)
    scale = (qa * qb).sum() / max((qb * qb).sum(), 1e-12)
    return float(np.linalg.norm(qa - scale * qb, axis=1).mean())


def _plausible_bounds() -> dict[str, tuple[float, float]]:
    """The general regime's lenses (`REGIME_RANGES`), each range widened by `PLAUSIBLE_MARGIN`
    of its ends' sizes (the focal length by half that: the equivalence moves along it); the
    `LOOSE_TERMS` within the model's `PARAM_BOUNDS`."""
    bounds = {}
    for name, (lo, hi) in zip(PARAM_NAMES, REGIME_RANGES["general"]):
        if name in LOOSE_TERMS:
            bounds[name] = PARAM_BOUNDS[name]
            continue
        margin = PLAUSIBLE_MARGIN / 2 if name == "focal" else PLAUSIBLE_MARGIN
        bounds[name] = (lo - margin * abs(lo), hi + margin * abs(hi))
    return bounds


PLAUSIBLE_BOUNDS = _plausible_bounds()


def equivalent_in_bounds(params: np.ndarray) -> np.ndarray | None:
    """The same warp, (f, k1, k2, k3, p1, p2) -> (s f, s^2 k1, s^4 k2, s^6 k3, s p1, s p2), at
    the focal length nearest ``params``' that makes it one of the plausible lenses
    (`PLAUSIBLE_BOUNDS`); None if no focal length does. The fit works at the network's focal
    length, where a wide lens has large coefficients."""
    lo_f, hi_f = PLAUSIBLE_BOUNDS["focal"]
    s = np.concatenate([[1.0], np.geomspace(lo_f / params[5], hi_f / params[5], 400)])
    s = s[np.argsort(np.abs(np.log(s)), kind="stable")]
    power = np.array([2, 4, 6, 1, 1, 1, 0, 0])
    candidates = params[None, :] * s[:, None] ** power[None, :]
    lo, hi = np.array([PLAUSIBLE_BOUNDS[n] for n in PARAM_NAMES]).T
    inside = np.flatnonzero(((candidates >= lo) & (candidates <= hi)).all(axis=1))
    return candidates[inside[0]] if len(inside) else None


def _implausible(params: np.ndarray, reported: np.ndarray | None, height: int, width: int) -> tuple[str, str] | None:
    """(code, reason) if a fitted lens is none of the plausible lenses at any focal length
    (``reported``: `equivalent_in_bounds` of it), or folds the frame."""
    if reported is None:
        return "out_of_bounds", (f"fitted lens (k1 {params[0]:.3f}, k2 {params[1]:.3f}, k3 {params[2]:.3f} at focal {params[5]:.3f}) "
                                 "is not a plausible lens at any focal length: curved objects bent straight")
    # the radial map r -> r (1 + k1 r^2 + k2 r^4 + k3 r^6) must rise up to the farthest corner
    f, cx, cy = camera_px(params, height, width)
    corner = max(np.hypot(x - cx, y - cy) for x in (0, width - 1) for y in (0, height - 1)) / f
    r2 = np.linspace(0, corner**2, 64)
    slope = 1 + 3 * params[0] * r2 + 5 * params[1] * r2**2 + 7 * params[2] * r2**3
    if slope.min() <= 0.2:
        return "not_monotonic", "fitted lens is not monotonic over the frame"
    return None


def _f_statistic(cost_restricted: float, cost_free: float, freed: int, spare: int) -> float:
    """F statistic of a model with ``freed`` more parameters: the cost it saves per parameter
    freed, against its remaining cost per ``spare`` observation (lines: points along one edge
    share its texture and JPEG blocks, so they are not independent)."""
    if spare <= 0:
        return 0.0
    return ((cost_restricted - cost_free) / freed) / max(cost_free / spare, 1e-12)


def _evidence(residual_network: np.ndarray, residual_fit: np.ndarray, fitted: int) -> float:
    """How much straighter the lines are under the fitted lens than under the network's."""
    return _f_statistic(float((residual_network**2).sum()), float((residual_fit**2).sum()), fitted, len(residual_fit) - fitted)


def _check(chosen, fitted, lines, residual_network, height, width, prior, photo_px=1.0):
    """(code, reason) of the first acceptance check that a fitted lens fails, or None; the
    lens as reported (`equivalent_in_bounds`), the split halves' warp gap and the median line
    residual under the lens, in the photo's pixels (``photo_px`` per pixel of the reference
    frame the checks work in; the reasons give the limits in the photo's pixels too)."""
    residual_fit, angle, length, centre = _line_geometry(chosen, lines, height, width)
    after = float(np.median(residual_fit))
    reported = equivalent_in_bounds(chosen)
    problem = _implausible(chosen, reported, height, width)
    if problem is None and after > MAX_LINE_RMS_PX:
        problem = "lines_not_straight", (f"the fitted lines stay {after * photo_px:.2f} px from straight (> {round(MAX_LINE_RMS_PX * photo_px, 2)}): "
                                         "not straight edges")
    if problem is None:
        alignment, balance = _one_way(chosen, angle, length, centre, height, width)
        if alignment > MAX_ALIGNMENT and balance < MIN_BALANCE:
            problem = "one_direction", (f"the lines run one way (alignment {alignment:.2f}) on one side of the centre "
                                        f"({balance:.0%} of their length on the other): a texture such as wood grain, not a scene's edges")
    if problem is None and (share := float(np.mean(residual_fit < residual_network))) < MIN_STRAIGHTER_SHARE:
        problem = "few_lines_straighter", (f"only {share:.0%} of the lines get straighter under the fitted lens "
                                           f"(< {MIN_STRAIGHTER_SHARE:.0%}): a few curves bent straight, not the photo's lens")
    if problem is None and (evidence := _evidence(residual_network, residual_fit, len(fitted))) < MIN_EVIDENCE_F:
        problem = "weak_evidence", (f"the lines barely prefer the fitted lens to the network's (F = {evidence:.1f} < {MIN_EVIDENCE_F}): "
                                    "curved objects, not straight edges")
    if problem is None and evidence < MIN_EVIDENCE_F_FAR and (move := warp_gap(chosen, prior, height, width)) > FAR_MOVE_PX:
        problem = "weak_evidence", (f"the fitted lens moves the warp {move * photo_px:.1f} px from the network's, on weak evidence "
                                    f"(F = {evidence:.1f} < {MIN_EVIDENCE_F_FAR} for a move beyond {round(FAR_MOVE_PX * photo_px, 2)} px)")
    gap = float("nan")
    if problem is None:  # split-half check: lines of a real lens agree; curves that the fit bent straight do not
        gap = warp_gap(*_split_half_fits(chosen, fitted, lines, height, width, prior), height, width)
        limit = MAX_HALF_GAP_FULL_PX if fitted == FULL and len(lines) >= MANY_LINES else MAX_HALF_GAP_PX
        if gap > limit:
            problem = "halves_disagree", f"two halves of the lines disagree by {gap * photo_px:.2f} px (> {round(limit * photo_px, 2)}): not a reliable fit"
    return problem, reported, gap * photo_px, after * photo_px
