"""Fallback policy: which warp an image gets, and why (reason codes).

``hybrid`` (parameters + residual) -> ``param_only`` (residual dropped) ->
``param_only_conservative`` (the predicted coefficients shrunk towards identity and clamped to
a box where the radial map is monotonic over the whole frame, with alpha = 0 framing: no fold-over
and no black border by construction). An image never leaves untouched unless asked.

The inputs are the safety statistics of `lens.geometry.SAFETY_STATS`, as plain floats, so this
module is shared by the runtime (no torch) and by `lens eval`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

MODES = ("hybrid", "param_only", "param_only_conservative")
#: Reason codes, and their bit in the violation masks an exported graph returns.
VIOLATIONS = ("out_of_bounds", "black_border", "foldover", "extreme_stretch", "residual_too_large")


@dataclass(frozen=True)
class SafetyThresholds:
    max_oob_fraction: float = 1e-4  # any visible padding is a defect in a deliverable
    max_border_invalid_fraction: float = 0.0
    min_jacobian_p01: float = 0.25  # local area ratio: below this the image is smeared
    max_foldover_fraction: float = 0.0
    max_residual_px: float = 24.0  # full-resolution pixels; a larger residual is not a lens

    def to_dict(self) -> dict:
        return asdict(self)


def violations(stats: dict[str, float], t: SafetyThresholds, check_residual: bool) -> list[str]:
    """Reason codes for every threshold ``stats`` breaks (empty: safe)."""
    out = []
    if stats["oob_fraction"] > t.max_oob_fraction:
        out.append("out_of_bounds")
    if stats["border_invalid_fraction"] > t.max_border_invalid_fraction:
        out.append("black_border")
    if stats["foldover_fraction"] > t.max_foldover_fraction:
        out.append("foldover")
    if stats["jacobian_p01"] < t.min_jacobian_p01:
        out.append("extreme_stretch")
    if check_residual and stats["residual_max_px"] > t.max_residual_px:
        out.append("residual_too_large")
    return out


def choose_mode(hybrid: dict[str, float] | None, param_only: dict[str, float], t: SafetyThresholds = SafetyThresholds()) -> tuple[str, list[str]]:
    """The first safe mode in the hierarchy and the reasons earlier modes were rejected, e.g.
    ``("param_only", ["hybrid:foldover"])``. ``hybrid`` is None for a parameter-only model."""
    reasons: list[str] = []
    if hybrid is not None:
        bad = violations(hybrid, t, check_residual=True)
        if not bad:
            return "hybrid", reasons
        reasons += [f"hybrid:{b}" for b in bad]
    bad = violations(param_only, t, check_residual=False)
    if not bad:
        return "param_only", reasons
    reasons += [f"param_only:{b}" for b in bad]
    return "param_only_conservative", reasons


def decode_violations(mask: int) -> list[str]:
    """Reason codes of a graph's violation bitmask (bit i = `VIOLATIONS`[i])."""
    return [name for i, name in enumerate(VIOLATIONS) if int(mask) >> i & 1]


def reasons_from_masks(mode: int, hybrid_mask: int, param_mask: int, has_residual: bool) -> list[str]:
    """The reason list `choose_mode` would give, from an exported graph's outputs."""
    reasons = []
    if mode >= 1 and has_residual:
        reasons += [f"hybrid:{r}" for r in decode_violations(hybrid_mask)]
    if mode >= 2:
        reasons += [f"param_only:{r}" for r in decode_violations(param_mask)]
    return reasons
