"""`refine_with_lines`: the rounds of joining and fitting, the choice between the radial and the
full lens model, and the acceptance checks, for one photo (`lens.runtime.plumb_line`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lens.runtime.plumb_line.acceptance import _check, _f_statistic, _implausible, equivalent_in_bounds
from lens.runtime.plumb_line.edges import WorkImage, _in_reference_frame, edge_chains, straight_pieces, work_image
from lens.runtime.plumb_line.lines import _lines, line_residuals
from lens.runtime.plumb_line.objective import EDGE_NOISE_PX, FULL, NOT_RADIAL, RADIAL, _fit, _Straightness, _with

# per round: join angle (deg), join offset (px), largest rms distance from straight a line may
# keep (px; before the round's fit: a wrong starting lens leaves real lines bent by up to ~6 px)
ROUNDS = ((4.0, 12.0, 8.0), (2.0, 6.0, 2.0), (1.0, 3.0, 1.0))
# Without the middle round the fit took 0.88x the time (80 textured photos and scenes) but the
# validation draws' mean EPE with the fit went 1.72 -> 1.99 px (workload, seed 0, 64 draws),
# 3.99 -> 4.01 (general), 1.38 -> 1.32 and 4.85 -> 4.87 (seed 1, 48 each): not taken.
ROUND_ITERATIONS = 6  # Levenberg-Marquardt steps of the early rounds (4 was no faster: they mostly stop sooner)
# A fit whose lens is none of the plausible lenses after both early rounds is refused there
# (`out_of_bounds`) instead of after the last round, the full model's fit and the checks, which
# refused every such fit seen (~65 ms of a core each): on 6 of the 24 textured bench photos
# (`tools/bench_cpu.py`), none of 224 validation draws (both regimes, seeds 0 and 1, 2048 px,
# the network's own priors; no outcome changed), and on 14 real photos (`tools/line_fit_photos.py`,
# 16 workload and 8 general lenses each) no used fit changed; 5 refusals there (wood grain,
# the moon) now say out_of_bounds where the checks said one_direction.
EARLY_IMPLAUSIBLE_ROUNDS = 2
FULL_MODEL_GAIN, FULL_MODEL_F = 1.1, 1.0  # model choice (`refine_with_lines`)
# The full model is fitted only where it could pass that choice (`_full_model_may_pass`): where
# its cost gain, as one Gauss-Newton step from the radial fit predicts it, times this margin,
# would. On the 96 validation draws of both regimes (seed 0) the full fit's gain was at most 2.9x
# (median 1.05x) the predicted one, and 46 of the 96 full fits were skipped, none of which the
# model choice had taken; no outcome changed there, on seed 1's draws, or on 17 real photos
# under 8 lenses each (`tools/line_fit_photos.py`). The fit ran ~7% faster.
FULL_MODEL_PREDICTION_MARGIN = 5.0
MIN_LINES = 5  # a fit stands on at least this many lines (its other checks: `acceptance`)
# k1 of the radial lenses (k2 = 0, the network's focal length) that a lost fit may start again
# from (`refine_with_lines`): barrel to pincushion, as far as the general regime's lenses go at
# the network's focal length (k1 = -0.6 there undistorts the corners beyond recognition). On
# draws no threshold was set on (2048 px, 48 per set, network's own predictions), mean gap to
# the true lens: general seed 3 4.67 -> 2.37 px (fits 75 and 37 px off came to 1.1 and 0.25),
# seed 4 2.91 -> 2.66 (16.5 -> 4.6); general seed 5, workload seed 3 and the 192 draws of
# seeds 0 and 1 unchanged. 9 of 336 fits started again, 3 of them were used. Real photos
# (`tools/line_fit_photos.py`, 17 photos x 16 lenses per regime): no line-free photo's fit
# used; a motorcycle's 4 -> 7 (general) and 6 -> 7 (workload) of 16.
SECOND_STARTS = (-0.45, -0.3, -0.15, 0.0, 0.15, 0.3)


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
    when the photo does not support a fit (`LineFit.reason` says why).

    The fit starts from the network's lens. Where it is refused in a way that says the start
    was wrong (`_fit_from`'s ``lost``), it is tried once more from the radial lens among
    `SECOND_STARTS` under which the most length of the photo's pieces joins into straight lines
    (`_second_start`), with the same prior and checks: from a lens far from the photo's, the
    rounds join the wrong pieces and the fit never finds its way."""
    work, photo_px = _in_reference_frame(photo if isinstance(photo, WorkImage) else work_image(photo))
    prior = np.asarray(prior, dtype=np.float64).reshape(8)
    pieces = straight_pieces(edge_chains(work))
    # The radial model is the workload's lens: k3, tangential terms and centre offset zero.
    # The prior centres the full model's extra terms on zero too (the general regime spreads
    # them around zero; the network's values for them carry no information yet).
    first, lost = _fit_from(pieces, work.height, work.width, photo_px, prior, _with(prior, NOT_RADIAL, np.zeros(len(NOT_RADIAL))))
    if not lost:
        return first
    start = _second_start(pieces, work.height, work.width, prior)
    if start is None:
        return first
    second, _ = _fit_from(pieces, work.height, work.width, photo_px, prior, start)
    if not second.accepted:
        return first
    second.reason += f"; from a second start (k1 {start[0]:.2f}, k2 0), as from the network's lens: {first.reason}"
    return second


def _second_start(pieces, height: int, width: int, prior: np.ndarray) -> np.ndarray | None:
    """The radial lens of `SECOND_STARTS` (at the network's focal length) under which the first
    round joins the most length of pieces into lines within 1 px of straight, if that is more
    than under the network's lens; else None."""
    def straight_length(params: np.ndarray) -> float:
        found, _ = _lines(pieces, params, height, width, *ROUNDS[0][:2])
        if len(found) == 0:
            return 0.0
        length = np.sqrt(12) * found.scale
        return float(length[line_residuals(params, found, height, width) < 1.0].sum())

    base = _with(prior, NOT_RADIAL, np.zeros(len(NOT_RADIAL)))
    scores = [(straight_length(_with(base, RADIAL, np.array([k1, 0.0]))), k1) for k1 in SECOND_STARTS]
    best, k1 = max(scores)
    return _with(base, RADIAL, np.array([k1, 0.0])) if best > straight_length(base) else None


def _fit_from(pieces, height: int, width: int, photo_px: float, prior: np.ndarray, start: np.ndarray) -> tuple[LineFit, bool]:
    """The rounds of joining and fitting from the lens ``start``, the model choice and the
    checks, with the network's lens ``prior``; and whether a refusal says the fit was lost
    rather than the photo without a lens to read: its lines came out straight but two halves of
    them disagree, or the fitted lens leaves them less straight than the network's (F < 0: a
    fit from a good start only gains). Other refusals (few lines, texture running one way,
    curves bent straight, an implausible lens) are the photo's, and a second start costs a
    textured photo ~50 ms for nothing."""
    network = prior
    params, lines, found, converged, undistorted = start, None, None, False, None
    implausible_rounds = 0
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
            implausible_rounds = implausible_rounds + 1 if equivalent_in_bounds(params) is None else 0
            if implausible_rounds == EARLY_IMPLAUSIBLE_ROUNDS:
                before = float(np.median(line_residuals(network, lines, height, width))) * photo_px
                code, reason = _implausible(params, None, height, width)
                return LineFit(network, False, code, f"{reason} (after {round_index + 1} of {len(ROUNDS)} rounds)", len(lines), before, before), False
    if lines is None:
        count = 0 if found is None else len(found)
        return LineFit(network, False, "too_few_lines", f"too few straight lines ({count} < {MIN_LINES})", count, float("nan"), float("nan")), False
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
                           len(lines), before, after), False
        failures.append((problem[0], f"{model} model: {problem[1]}" if use_full else problem[1]))
    code = failures[-1][0]  # the radial lens's
    lost = code == "halves_disagree"
    if code == "weak_evidence":  # F < 0
        fitted = line_residuals(radial, lines, height, width)
        lost = float(fitted @ fitted) > float(residual_network @ residual_network)
    return LineFit(network, False, code, "; ".join(reason for _, reason in failures), len(lines), before, before), lost


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
