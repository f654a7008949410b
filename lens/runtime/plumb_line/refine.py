"""`refine_with_lines`: the rounds of joining and fitting, the choice between the radial and the
full lens model, and the acceptance checks, for one photo (`lens.runtime.plumb_line`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lens.runtime.plumb_line.acceptance import _check, _f_statistic
from lens.runtime.plumb_line.edges import WorkImage, _in_reference_frame, edge_chains, straight_pieces, work_image
from lens.runtime.plumb_line.lines import _lines, line_residuals
from lens.runtime.plumb_line.objective import EDGE_NOISE_PX, FULL, NOT_RADIAL, RADIAL, _fit, _Straightness, _with

# per round: join angle (deg), join offset (px), largest rms distance from straight a line may
# keep (px; before the round's fit: a wrong starting lens leaves real lines bent by up to ~6 px)
ROUNDS = ((4.0, 12.0, 8.0), (2.0, 6.0, 2.0), (1.0, 3.0, 1.0))
ROUND_ITERATIONS = 6  # Levenberg-Marquardt steps of the early rounds
FULL_MODEL_GAIN, FULL_MODEL_F = 1.1, 1.0  # model choice (`refine_with_lines`)
# The full model is fitted only where it could pass that choice (`_full_model_may_pass`): where
# its cost gain, as one Gauss-Newton step from the radial fit predicts it, times this margin,
# would. On the 96 validation draws of both regimes (seed 0) the full fit's gain was at most 2.9x
# (median 1.05x) the predicted one, and 46 of the 96 full fits were skipped, none of which the
# model choice had taken; no outcome changed there, on seed 1's draws, or on 17 real photos
# under 8 lenses each (`tools/line_fit_photos.py`). The fit ran ~7% faster.
FULL_MODEL_PREDICTION_MARGIN = 5.0
MIN_LINES = 5  # a fit stands on at least this many lines (its other checks: `acceptance`)


@dataclass
class LineFit:
    params: np.ndarray  # (8,) float64, PARAM_NAMES order: the refined set, or the prior if not accepted
    accepted: bool
    code: str  # refined_radial | refined_full | too_few_lines | lines_not_straight | one_direction | few_lines_straighter | weak_evidence | halves_disagree | out_of_bounds | not_monotonic | fit_error
    reason: str  # the same in words, with the numbers
    lines: int  # lines supporting the final fit
    rms_prior_px: float  # median line residual (px) under the prior parameters, same lines
    rms_px: float  # ... under the returned parameters

    def as_dict(self) -> dict:
        return {"accepted": self.accepted, "code": self.code, "reason": self.reason, "lines": self.lines,
                "rms_prior_px": round(self.rms_prior_px, 4), "rms_px": round(self.rms_px, 4)}


def refine_with_lines(photo: np.ndarray | WorkImage, prior: np.ndarray) -> LineFit:
    """Refit the lens of ``prior`` (8 parameters, `PARAM_NAMES` order) to the straight lines of
    a full-resolution greyscale photo ``(H, W)`` uint8 (or its `work_image`). Returns the prior
    when the photo does not support a fit (`LineFit.reason` says why)."""
    work, photo_px = _in_reference_frame(photo if isinstance(photo, WorkImage) else work_image(photo))
    height, width = work.height, work.width
    prior = np.asarray(prior, dtype=np.float64).reshape(8)
    pieces = straight_pieces(edge_chains(work))
    # The radial model is the workload's lens: k3, tangential terms and centre offset zero.
    # The prior centres the full model's extra terms on zero too (the general regime spreads
    # them around zero; the network's values for them carry no information yet).
    network = prior
    params, lines, found, converged, undistorted = _with(prior, NOT_RADIAL, np.zeros(len(NOT_RADIAL))), None, None, False, None
    for round_index, (max_angle, max_offset, max_rms) in enumerate(ROUNDS):
        found, undistorted = _lines(pieces, params, height, width, max_angle, max_offset, undistorted)
        if len(found) < MIN_LINES:
            break
        r = line_residuals(params, found, height, width)
        found = found.subset(r <= min(3 * np.median(r) + 0.5, max_rms))
        if len(found) < MIN_LINES:
            break
        lines = found
        # early rounds only need the lens well enough to join the next round's lines
        converged = round_index == len(ROUNDS) - 1
        if converged:
            params, cost_radial = _fit(params, lines, height, width, prior, RADIAL)
        else:
            params, _ = _fit(params, lines, height, width, prior, RADIAL, ROUND_ITERATIONS, cost=False)  # its cost is not needed
    if lines is None:
        count = 0 if found is None else len(found)
        return LineFit(network, False, "too_few_lines", f"too few straight lines ({count} < {MIN_LINES})", count, float("nan"), float("nan"))
    # Model choice: the five extra terms must cut the residual cost by `FULL_MODEL_GAIN` and
    # pass an F-test with the lines as observations (few lines fit anything), else the
    # centred radial lens (the workload's) is kept. Counting points as independent picks the
    # full model on radial lenses: points along one edge share its texture and JPEG blocks.
    # Both thresholds were set on synthetic pairs of both regimes: a decentred or tangential
    # lens's straightness gains little from the right model while its warp gains much.
    radial = params
    if not converged:  # a later round found too few lines: finish the fit on the last ones
        radial, cost_radial = _fit(params, lines, height, width, prior, RADIAL)
    full_straightness = _Straightness(radial, lines, height, width, prior, FULL)
    use_full = False
    if _full_model_may_pass(full_straightness, radial, cost_radial, len(lines)):
        full, cost_full = _fit(radial, lines, height, width, prior, FULL, function=full_straightness)
        use_full = _full_model_chosen(cost_radial, cost_full, len(lines))
    # The full model, when chosen, must pass the checks too; if it does not (its principal
    # point is the least determined term, so its split halves disagree first), the radial lens
    # is checked in its place: on general-regime scenes it still gets most of the way.
    residual_network = line_residuals(network, lines, height, width)
    before = float(np.median(residual_network)) * photo_px
    failures = []
    for chosen, fitted in ([(full, FULL), (radial, RADIAL)] if use_full else [(radial, RADIAL)]):
        problem, reported, gap, after = _check(chosen, fitted, lines, residual_network, height, width, prior, photo_px)
        model = "full" if fitted == FULL else "radial"
        if problem is None:
            note = f" ({failures[0][1]})" if failures else ""
            return LineFit(reported, True, f"refined_{model}", f"refined, {model} model (halves agree to {gap:.2f} px){note}",
                           len(lines), before, after)
        failures.append((problem[0], f"{model} model: {problem[1]}" if use_full else problem[1]))
    return LineFit(network, False, failures[-1][0], "; ".join(reason for _, reason in failures), len(lines), before, before)


def _full_model_chosen(cost_radial: float, cost_full: float, lines: int) -> bool:
    """The model choice of `refine_with_lines`, from the two fits' data costs (px^2)."""
    f_ratio = _f_statistic(cost_radial, cost_full, len(FULL) - len(RADIAL), lines - len(FULL))
    return f_ratio > FULL_MODEL_F and cost_radial > FULL_MODEL_GAIN * cost_full


def _full_model_may_pass(function: "_Straightness", radial: np.ndarray, cost_radial: float, lines: int) -> bool:
    """Whether the full model could be chosen over the ``radial`` fit: its cost gain predicted by
    one Gauss-Newton step (the Levenberg-Marquardt fit's first Jacobian, which it reuses),
    times `FULL_MODEL_PREDICTION_MARGIN`."""
    r, jac = function(radial[list(FULL)], jacobian=True)
    g, a = jac.T @ r, jac.T @ jac
    gain = float(g @ np.linalg.solve(a + 1e-12 * np.diag(np.diag(a) + 1.0), g)) * EDGE_NOISE_PX**2
    return _full_model_chosen(cost_radial, max(cost_radial - FULL_MODEL_PREDICTION_MARGIN * gain, 1e-12), lines)
