"""What the fit minimises and how (step 3 of `lens.runtime.plumb_line`): each line's scale-free
distance from straight, with its own offset and angle projected out (variable projection),
plus a prior around the network's radial shape; Levenberg-Marquardt over the radial or the
full lens model."""
from __future__ import annotations

import numpy as np

from lens.runtime.lens_maps import camera_px, undistort_normalised, undistort_px
from lens.runtime.plumb_line.lines import NEWTON_TOLERANCE, _Lines

EDGE_NOISE_PX = 0.2  # rms distance of edge points from a straight edge
RADIAL = (0, 1)  # k1, k2 (PARAM_NAMES indices): the workload's centred radial lens
NOT_RADIAL = (2, 3, 4, 6, 7)  # zero in the radial model
FULL = (0, 1, 2, 3, 4, 6, 7)  # + k3, p1, p2 and the principal point
# The prior holds the radial shape near the network's: the distorted radius at `PRIOR_RADII` of
# the corner's, relative to the corner's (`_radial_shape_and_derivative`), within
# `PRIOR_SHAPE_PX` (the workload's lenses spread by 15-22 px there). A prior on the warp, not
# on k1 and k2 one by one: they trade off (a larger k1 with a larger k2 of the other sign bends
# much the same), so independent priors penalise ordinary warps with large coefficients, such
# as a wide lens seen at the network's focal length. k3 keeps a small prior of its own too (it
# only bends the corners; without one the split-half fits of the full model wander), and the
# other terms one around zero with the general regime's spread. With `equivalent_in_bounds`,
# on 64 general-regime validation scenes: mean EPE 6.02 -> 5.37 px.
PRIOR_RADII = (0.3, 0.55, 0.8)
PRIOR_SHAPE_PX = 12.0
PRIOR_SIGMA = {2: 0.03, 3: 0.002, 4: 0.002, 6: 0.01, 7: 0.01}
RADIAL_TERMS = (0, 1, 2)


def _ideal_derivative(x, y, model_jacobian, params, height, width, fitted) -> tuple[np.ndarray, np.ndarray]:
    """Derivatives ``(N, len(fitted))`` of the ideal pixels' x and y by the parameters
    ``fitted`` (indices), at the ideal normalised points ``x, y`` of `undistort_normalised` and
    its Jacobian there: the implicit function theorem on distort(ideal) = observed."""
    f = params[5] * width
    jxx, jxy, jyy = model_jacobian
    det = jxx * jyy - jxy * jxy
    det = np.where(np.abs(det) < 1e-9, 1e-9, det)
    ixx, ixy, iyy = jyy / det, -jxy / det, jxx / det  # inverse of the model's Jacobian
    dx, dy = np.empty((len(x), len(fitted))), np.empty((len(x), len(fitted)))
    r2 = None
    for j, index in enumerate(fitted):
        if index in (0, 1, 2, 3, 4):  # lens terms: ideal = f u, d u = -J^-1 d distort
            if r2 is None:
                r2 = x * x + y * y
            if index in (0, 1, 2):  # k1, k2, k3: d distort / d k = (x, y) r^2, r^4 or r^6
                power = r2 ** (index + 1)
                bx, by = x * power, y * power
            elif index == 3:  # p1
                bx, by = 2 * x * y, r2 + 2 * y * y
            else:  # p2
                bx, by = r2 + 2 * x * x, 2 * x * y
            dx[:, j] = -(ixx * bx + ixy * by) * f
            dy[:, j] = -(ixy * bx + iyy * by) * f
        elif index == 6:  # principal point, in units of the width: ideal = f u((p - c) / f) + c
            dx[:, j], dy[:, j] = (1 - ixx) * width, -ixy * width
        else:
            dx[:, j], dy[:, j] = -ixy * width, (1 - iyy) * width
    return dx, dy


def _with(params: np.ndarray, fitted: tuple[int, ...], values: np.ndarray) -> np.ndarray:
    out = params.copy()
    out[list(fitted)] = values
    return out


def _radial_powers(focal: float, height: int, width: int) -> tuple[np.ndarray, np.ndarray, float]:
    """The reference radii u of `_radial_shape_and_derivative` at focal length ``focal`` (in
    units of the width), the derivatives of the distorted radius there by (k1, k2, k3), and the
    corner's distance (px)."""
    corner = np.hypot((width - 1) / 2, (height - 1) / 2)
    u = np.array([*PRIOR_RADII, 1.0]) * corner / (focal * width)
    return u, u[:, None] ** np.array([3, 5, 7])[None, :], corner


def _radial_shape_and_derivative(params: np.ndarray, height: int, width: int, powers=None) -> tuple[np.ndarray, np.ndarray]:
    """The lens's radial shape: the distorted radius at `PRIOR_RADII` of a reference radius u
    (the corner's distance over f), over that at u itself, times the corner's distance (px).
    The same for every (f, k) of one warp (u -> u / s, k_i u^(2 i) unchanged). Also its
    derivative ``(len(PRIOR_RADII), 3)`` by (k1, k2, k3). ``powers``: `_radial_powers` at
    ``params``' focal length, when the caller has them."""
    u, powers, corner = powers or _radial_powers(params[5], height, width)
    distorted = u + powers @ params[:3]
    shape = distorted[:-1] / distorted[-1] * corner
    derivative = (powers[:-1] * distorted[-1] - distorted[:-1, None] * powers[-1:]) / distorted[-1] ** 2 * corner
    return shape, derivative


class _Prior:
    """Prior residuals and their Jacobian for the ``fitted`` indices: the radial shape
    (`_radial_shape_and_derivative`) against the network's, and the terms of `PRIOR_SIGMA`
    against zero. ``focal``: the focal length of every parameter set it is called with (the
    fit never moves it), so the radii's powers are computed once."""

    def __init__(self, network: np.ndarray, fitted: tuple[int, ...], height: int, width: int, focal: float):
        self.fitted, self.size = fitted, (height, width)
        self.radial = [j for j, i in enumerate(fitted) if i in RADIAL_TERMS]  # in the shape
        self.radial_terms = [fitted[j] for j in self.radial]
        self.other = [j for j, i in enumerate(fitted) if i in PRIOR_SIGMA]
        self.target = _radial_shape_and_derivative(network, height, width)[0]
        self.sigma = np.array([PRIOR_SIGMA[fitted[j]] for j in self.other])
        self.focal, self.powers = focal, _radial_powers(focal, height, width)
        self.jac = np.zeros((len(PRIOR_RADII) + len(self.other), len(fitted)))
        self.jac[len(PRIOR_RADII) + np.arange(len(self.other)), self.other] = 1 / self.sigma

    def __call__(self, params: np.ndarray, k: np.ndarray, jacobian: bool = False):
        shape, derivative = _radial_shape_and_derivative(params, *self.size, self.powers if params[5] == self.focal else None)
        residuals = np.concatenate([(shape - self.target) / PRIOR_SHAPE_PX, k[self.other] / self.sigma])
        if not jacobian:
            return residuals
        jac = self.jac.copy()
        jac[: len(PRIOR_RADII), self.radial] = derivative[:, self.radial_terms] / PRIOR_SHAPE_PX
        return residuals, jac


class _Straightness:
    """Residuals (per point: distance from its line's best fit, over the line's current
    length, times its starting length) and their Jacobian by the ``fitted`` parameters for
    Levenberg-Marquardt, with each line's own fit (offset, angle) projected out: variable
    projection (Golub and Pereyra), so Gauss-Newton steps see only what the lens changes.
    Newton is warm-started from the ideal points of the parameters the function was made with.

    Speed (the fit is most of the line fit's time, and its arrays are small, so numpy's
    per-call overhead dominates): points are sorted by line once, so per-line sums of all
    fitted parameters' columns are one ``np.add.reduceat`` each; and the Jacobian at a trial
    point that Levenberg-Marquardt accepted reuses that trial's undistortion."""

    def __init__(self, params, lines: _Lines, height, width, prior: np.ndarray, fitted: tuple[int, ...]):
        self.params, self.size, self.fitted = params, (height, width), fitted
        order = np.argsort(lines.label, kind="stable")
        self.points, self.label, self.scale = lines.points[order], lines.label[order], lines.scale
        self.starts = np.flatnonzero(np.r_[True, self.label[1:] != self.label[:-1]])  # every line has points
        self.n = np.diff(np.r_[self.starts, len(self.label)]).astype(np.float64)
        self.prior = _Prior(prior, fitted, height, width, params[5])
        self.start = undistort_px(self.points, params, height, width, iterations=12, tolerance=NEWTON_TOLERANCE)
        self._last = None  # (k, params, x, y, model Jacobian) of the latest evaluation
        self._last_jacobian = None  # (k, residuals, Jacobian) of the latest evaluation with one

    def _sums(self, values: np.ndarray) -> np.ndarray:
        """Per-line sums along the first axis."""
        return np.add.reduceat(values, self.starts, axis=0)

    def _undistort(self, k: np.ndarray):
        if self._last is None or not np.array_equal(self._last[0], k):
            params = _with(self.params, self.fitted, k)
            # two Newton steps from the start: quadratic convergence takes even a 1% start error to 1e-8
            self._last = (k.copy(), params, *undistort_normalised(self.points, params, *self.size, self.start, 2))
        return self._last[1:]

    def __call__(self, k: np.ndarray, jacobian: bool = False):
        if jacobian and self._last_jacobian is not None and np.array_equal(self._last_jacobian[0], k):
            return self._last_jacobian[1:]
        # x and y as separate arrays throughout: numpy's reductions over a length-2 axis and
        # stacking cost more than the arithmetic on a thousand points
        label, n = self.label, self.n
        params, x, y, model_jacobian = self._undistort(k)
        f, cx, cy = camera_px(params, *self.size)
        ux, uy = x * f + cx, y * f + cy
        qx = ux - (self._sums(ux) / n)[label]
        qy = uy - (self._sums(uy) / n)[label]
        moments = self._sums(np.stack([qx * qx, qx * qy, qy * qy], axis=1)) / n[:, None]
        a_xx, a_xy, a_yy = moments[:, 0], moments[:, 1], moments[:, 2]
        half_trace, root = (a_xx + a_yy) / 2, np.sqrt(((a_xx - a_yy) / 2) ** 2 + a_xy * a_xy)
        major = half_trace + root
        angle = 0.5 * np.arctan2(2 * a_xy, a_xx - a_yy)
        cos, sin = np.cos(angle)[label], np.sin(angle)[label]  # along the line; the normal is (-sin, cos)
        a = qy * cos - qx * sin
        # scale-free: the distance over the line's current length, times its starting length
        norm = (self.scale / np.sqrt(np.maximum(major, 1e-12)))[label]
        # in units of a real edge's straightness noise, with the prior as more residuals: a
        # photo whose lines do not pin the lens down (a curved flag, a few lines through the
        # centre) stays near the network's parameters instead of wandering along a flat valley
        prior = self.prior(params, k, jacobian)
        residuals = np.concatenate([a * norm / EDGE_NOISE_PX, prior[0] if jacobian else prior])
        if not jacobian:
            return residuals
        b = qx * cos + qy * sin
        dx, dy = _ideal_derivative(x, y, model_jacobian, params, *self.size, self.fitted)  # (N, P) each
        dmx, dmy = self._sums(dx) / n[:, None], self._sums(dy) / n[:, None]
        da = (dy - dmy[label]) * cos[:, None] - (dx - dmx[label]) * sin[:, None]
        dmajor = 2 * self._sums(b[:, None] * (dx * cos[:, None] + dy * sin[:, None])) / n[:, None]
        col = (da - 0.5 * a[:, None] * (dmajor / np.maximum(major, 1e-12)[:, None])[label]) * norm[:, None]
        # project out what re-fitting each line absorbs (its offset and its angle)
        col = col - (self._sums(col) / n[:, None])[label]
        bb = np.maximum(self._sums(b * b), 1e-12)
        jac = col - b[:, None] * (self._sums(b[:, None] * col) / bb[:, None])[label]
        self._last_jacobian = (k.copy(), residuals, np.concatenate([jac / EDGE_NOISE_PX, prior[1]]))
        return self._last_jacobian[1:]


def _levenberg_marquardt(fun, theta: np.ndarray, iterations: int = 20) -> np.ndarray:
    """Minimise ||fun(theta)||^2; ``fun(theta, jacobian=True)`` also gives the Jacobian."""
    r, jac = fun(theta, jacobian=True)
    cost, damping = r @ r, 1e-3
    for _ in range(iterations):
        a, g = jac.T @ jac, jac.T @ r
        previous = cost
        while True:
            damped = a.copy()
            damped.flat[:: len(a) + 1] += damping * (a.diagonal() + 1e-12)
            delta = -np.linalg.solve(damped, g)
            trial = fun(theta + delta)
            if trial @ trial < cost:
                theta, cost, damping = theta + delta, trial @ trial, damping * 0.3
                break
            damping *= 10
            if damping > 1e10:
                return theta
        if np.abs(delta).max() < 1e-7 or previous - cost < 1e-5 * previous:
            break
        r, jac = fun(theta, jacobian=True)
    return theta


def _fit(params, lines, height, width, prior, fitted, iterations=20, cost=True, function=None) -> tuple[np.ndarray, float]:
    """Levenberg-Marquardt from ``params`` on the ``fitted`` indices; the fitted parameter set
    and its data cost (sum of squared point residuals, px^2; NaN unless ``cost``).
    ``function``: the `_Straightness` of these arguments, when the caller has made it."""
    function = function or _Straightness(params, lines, height, width, prior, fitted)
    values = _levenberg_marquardt(function, params[list(fitted)], iterations)
    if not cost:
        return _with(params, fitted, values), float("nan")
    residuals = function(values)[: len(function.points)] * EDGE_NOISE_PX
    return _with(params, fitted, values), float(residuals @ residuals)


def _split_half_fits(params, fitted, lines, height, width, prior) -> list[np.ndarray]:
    """The lens refitted to every other line (both halves), each by one Gauss-Newton step from
    ``params``, the fit to all of them: with each line's own offset and angle projected out,
    a half's rows of the Jacobian are the full one's, so one evaluation serves both. On the
    384 validation draws of both regimes (seeds 0 and 1), the halves' warp gap so found was
    within 1.3% (median) of six Levenberg-Marquardt steps per half, and no check decided
    otherwise (177 checks), for ~1/10 of the cost."""
    function = _Straightness(params, lines, height, width, prior, fitted)
    values = params[list(fitted)]
    r, jac = function(values, jacobian=True)
    data = len(function.points)
    halves = []
    for half in (0, 1):
        rows = np.r_[function.label % 2 == half, np.ones(len(r) - data, bool)]  # its lines' points and the prior
        j, rh = jac[rows], r[rows]
        a = j.T @ j
        halves.append(_with(params, fitted, values - np.linalg.solve(a + 1e-3 * np.diag(np.diag(a) + 1e-12), j.T @ rh)))
    return halves
