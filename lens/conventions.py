"""Names shared by the training stack and the torch-free runtime (no imports: the runtime reads
these without pulling in torch). `lens.geometry.params` and `lens.geometry.safety` document them."""

#: Order of the lens parameter vector (units and bounds: `lens.geometry.params`).
PARAM_NAMES: tuple[str, ...] = ("k1", "k2", "k3", "p1", "p2", "focal", "cx", "cy")

#: Bounds a predicting model is held to (table in `lens.geometry.params`); `LensParams` itself
#: checks only what is physical (finite values, focal > 0).
PARAM_BOUNDS: dict[str, tuple[float, float]] = {
    "k1": (-0.8, 0.8),
    "k2": (-0.8, 1.2),
    "k3": (-1.0, 1.0),
    "p1": (-0.02, 0.02),
    "p2": (-0.02, 0.02),
    "focal": (0.4, 3.0),
    "cx": (-0.1, 0.1),
    "cy": (-0.1, 0.1),
}

#: The lenses of the two synthetic regimes (`lens.training.synth`): (low, high) per parameter in
#: `PARAM_NAMES` order, uniform; a fixed value has low == high. "general" spans every lens the
#: default model is trained and validated on; the runtime's line fit takes it as the range of
#: plausible lenses (`lens.runtime.plumb_line`).
REGIME_RANGES: dict[str, list[tuple[float, float]]] = {
    "workload": [(-0.35, 0.0), (0.0, 0.6), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0), (1.0, 1.0), (0.0, 0.0), (0.0, 0.0)],
    "general": [(-0.4, 0.25), (-0.1, 0.5), (-0.05, 0.05), (-0.004, 0.004), (-0.004, 0.004), (0.7, 1.5), (-0.03, 0.03), (-0.03, 0.03)],
}

#: How far from the centre a photo's corners may lie, in focal lengths at the convention's
#: f = image width, for `lens run` to correct it. A tall frame's corners lie far out: 0.90 for a
#: 2:3 portrait, 1.29 for one at the general regime's shortest focal length (0.7), the furthest
#: any trained lens reaches. Beyond, the lens polynomial extrapolates: on a 1:3 frame the default
#: model's lens moved pixels by a third of the width and bent straight edges. Every landscape
#: frame and portraits up to 1:2.4 are within it.
MAX_CORNER_RADIUS = 1.3

#: Order of the safety statistics of a grid (definitions: `lens.geometry.safety`).
SAFETY_STATS: tuple[str, ...] = (
    "oob_fraction",  # share of output pixels sampling outside the input (would show padding)
    "border_invalid_fraction",  # share of the output's outermost ring of pixels doing so
    "jacobian_min",  # smallest local area ratio d(input)/d(output); 1 = identity
    "jacobian_p01",  # its 1st percentile
    "foldover_fraction",  # share of pixels whose Jacobian determinant is <= 0 (fold-over)
    "residual_mean_px",  # mean residual-flow magnitude, in full-resolution pixels
    "residual_max_px",  # its maximum
)

#: The workload's files (shared/DESIGN.md): a pair is ``<id>_original.jpg``, the distorted
#: input, and ``<id>_generated.jpg``, its corrected target; a submission entry is ``<id>.jpg``.
#: `lens run` names the correction of ``<id>_original.jpg`` ``<id>.jpg`` and leaves a target
#: beside its input alone; `lens qa` reads the ids the same way.
WORKLOAD_INPUT_SUFFIX = "_original.jpg"
WORKLOAD_TARGET_SUFFIX = "_generated.jpg"
