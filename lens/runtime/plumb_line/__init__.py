"""Plumb-line refinement: read the lens from the photo's own straight lines.

The network sees the photo at 240 px, where two lenses of the workload differ by about one
pixel of bend after the alpha = 0 zoom; so far it learns the typical lens, not this one.
Straight edges at 1024 px carry the bend directly (a line near the border bows by 5-20 px at
2048 px). So the network's parameters are the starting point, and the lens is refitted so that
the photo's long edges become straight after undistortion (the plumb-line method of Brown,
1971, and Devernay & Faugeras, 2001). Steps, all OpenCV / numpy (the runtime has no torch):

1. Canny edges of the greyscale photo at about `WORK_WIDTH` (thresholds from its contrast), linked
   into chains (findContours), each edge pixel moved to the sub-pixel peak of the gradient.
2. Chains are split at corners into nearly straight pieces (Douglas-Peucker). After
   undistortion with the current lens, pieces with the same gradient polarity on one line are
   joined (a grid line crossed by others, a row of window sills): a line is as long as the
   photo allows, and its bend grows with the square of its length.
3. Levenberg-Marquardt with variable projection minimises each line's scale-free distance from
   straight, plus a prior around the network's radial shape (the same for every focal length
   of one warp); lines far worse than the median (curved objects) are dropped. Three rounds
   with tighter joins. A fit that got lost from the network's lens (its lines straight but
   two halves of them disagreeing, or less straight than before) starts once more from the
   radial lens that joins the most straight length (`refine.SECOND_STARTS`).
4. Model: the workload's centred radial lens (k1, k2; focal length kept: with a centred lens
   (k1, k2, f) are degenerate in pixels, f -> s f, k1 -> s^2 k1, k2 -> s^4 k2 is the same
   warp), or the full one (+ k3, p1, p2, principal point) when the lines clearly ask for it.

A fit is used only when at least `MIN_LINES` lines support it, they end up straight, lines
that all run one way lie on both sides of the centre, most of them get straighter, they prefer
it to the network's lens by more than its extra freedom explains (an F-test), two halves of
them agree on the warp, and the lens is a plausible one with a monotonic radial map (at some
focal length: it is reported at the one nearest the network's); otherwise the
network's parameters stand and `LineFit.code` says why (portraits and landscapes have few
straight lines). The thresholds (in `acceptance`) were set on synthetic scenes of both regimes.

Modules, in the order a photo goes through them: `edges` (work image, Canny chains, straight
pieces), `lines` (pieces joined into lines; straightness under a lens), `objective` (the
residuals, their Jacobian and Levenberg-Marquardt), `acceptance` (the checks a fit must pass),
`refine` (`refine_with_lines`: rounds, model choice, checks) and `pool` (`LineFitPool`, the
fits of `lens run`).
"""
from lens.runtime.plumb_line.acceptance import PLAUSIBLE_BOUNDS, equivalent_in_bounds, warp_gap
from lens.runtime.plumb_line.edges import REFERENCE_WIDTH, WORK_WIDTH, WorkImage, edge_chains, straight_pieces, work_image
from lens.runtime.plumb_line.lines import line_residuals
from lens.runtime.plumb_line.pool import LineFitPool
from lens.runtime.plumb_line.refine import LineFit, refine_with_lines

__all__ = ["PLAUSIBLE_BOUNDS", "REFERENCE_WIDTH", "WORK_WIDTH", "LineFit", "LineFitPool", "WorkImage", "edge_chains",
           "equivalent_in_bounds", "line_residuals", "refine_with_lines", "straight_pieces", "warp_gap", "work_image"]
