"""LensNet: lens parameters plus a bounded low-resolution residual flow from one photo.

The network sees the image resized (antialiased, `to_model_input`) to a fixed size plus three
coordinate channels: x and y of each pixel in units of the image width from the centre, and
r^2. They carry the true aspect ratio, which the fixed-size resize hides, and the position of
each feature relative to the optical centre, where distortion grows with r.

- parameter head: identity at initialisation (its last layer starts at zero) and bounded.
  With ``param_head="displacement"`` (default) the radial terms are predicted as the radial
  displacement at three radii (0.3, 0.6, 0.9 widths) and solved for k1, k2, k3: the raw
  coefficients are strongly correlated (k1 and k2 both bend the periphery), and predicting
  them directly conditions the problem so badly that training collapses to the mean
  (measured: memorising 16 images reaches 8.6 px in 80 steps with coefficients, 1.5 px with
  displacements). ``"coefficients"``: ``k1 = 0.8 tanh(z0)``, ... (the first default model);
- residual head: a flow at 1/8 of the input size, in pixels of its own grid, bounded by
  ``max_residual_px`` via tanh and zero at initialisation.

The warp itself is applied at full resolution by `lens.geometry`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lens.geometry import NUM_PARAMS

# Half-ranges of the bounded parameter outputs, PARAM_NAMES order (focal is log-scaled).
_PARAM_SCALE = (0.8, 1.0, 0.5, 0.02, 0.02, 0.7, 0.1, 0.1)
# Displacement head: radii (in focal lengths) and the half-range of the displacement there.
_RADII = (0.3, 0.6, 0.9)
_DISP_SCALE = (0.03, 0.3, 1.2)


@dataclass
class ModelConfig:
    backbone: str = "small"  # "small" trains on a CPU; "small-hr" for 320 x 480 inputs; "resnet" is a ResNet-18-style GPU model
    input_height: int = 160
    input_width: int = 240
    max_residual_px: float = 2.0  # residual bound, in pixels of the 1/8 flow grid
    width_mult: float = 1.0
    param_head: str = "displacement"  # or "coefficients" (see the module docstring)

    def to_dict(self) -> dict:
        return asdict(self)


def _conv(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.body = nn.Sequential(_conv(cin, cout, stride), nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return F.relu(self.body(x) + self.skip(x))


def _backbone(kind: str, mult: float) -> tuple[nn.Module, nn.Module, int, int, int]:
    """(to 1/8, from 1/8 to the parameter head's map, channels at 1/8, channels there, the
    head map's total stride)."""
    c = lambda n: max(8, int(n * mult))  # noqa: E731
    if kind == "small":
        to8 = nn.Sequential(_conv(6, c(24), 2), _conv(c(24), c(32)), _conv(c(32), c(48), 2), _conv(c(48), c(48)), _conv(c(48), c(64), 2), _conv(c(64), c(64)))
        to32 = nn.Sequential(_conv(c(64), c(96), 2), _conv(c(96), c(96)), _conv(c(96), c(128), 2), _conv(c(128), c(128)))
        return to8, to32, c(64), c(128), 32
    if kind == "small-hr":
        # For twice the input size (320 x 480): what lenses differ by, after the alpha = 0
        # zoom, is a bend of ~10 px at 2048 px, ~1 px at 240 px wide. A cheap stride-4 stem
        # keeps the cost near "small"'s (~1.8x the multiply-adds) while the first layers see
        # edges at twice the resolution.
        to8 = nn.Sequential(_conv(6, c(16), 2), _conv(c(16), c(24), 2), _conv(c(24), c(32)), _conv(c(32), c(48), 2), _conv(c(48), c(48)), _conv(c(48), c(64)))
        to32 = nn.Sequential(_conv(c(64), c(96), 2), _conv(c(96), c(96)), _conv(c(96), c(128), 2), _conv(c(128), c(128)), _conv(c(128), c(128), 2))
        return to8, to32, c(64), c(128), 64
    if kind == "resnet":
        to8 = nn.Sequential(_conv(6, c(64), 2), _Basic(c(64), c(64), 1), _Basic(c(64), c(64), 1), _Basic(c(64), c(128), 2), _Basic(c(128), c(128), 1), _Basic(c(128), c(128), 2))
        to32 = nn.Sequential(_Basic(c(128), c(256), 2), _Basic(c(256), c(256), 1), _Basic(c(256), c(512), 2), _Basic(c(512), c(512), 1))
        return to8, to32, c(128), c(512), 32
    raise ValueError(f"unknown backbone {kind!r}: choose 'small', 'small-hr' or 'resnet'")


def coordinate_channels(batch: int, in_h: int, in_w: int, aspect: torch.Tensor) -> torch.Tensor:
    """``(B, 3, h, w)``: x and y in units of the image width from the centre, and r^2.
    ``aspect`` is the original H / W per image, ``(B,)``; its dtype is the channels' dtype."""
    xs = (torch.arange(in_w, dtype=aspect.dtype, device=aspect.device) * (1.0 / (in_w - 1)) - 0.5).reshape(1, 1, -1)
    ys = (torch.arange(in_h, dtype=aspect.dtype, device=aspect.device) * (1.0 / (in_h - 1)) - 0.5).reshape(1, -1, 1) * aspect.reshape(-1, 1, 1)
    x, y = torch.broadcast_tensors(xs, ys)
    return torch.stack([x, y, x * x + y * y], dim=1).expand(batch, -1, -1, -1)


def to_model_input(image: torch.Tensor, in_h: int, in_w: int) -> torch.Tensor:
    """``(B, 3, H, W)`` pixels in [0, 255] (uint8 or float) -> normalised float ``(B, 3, h, w)``.

    Every other pixel and row, converted to float, resized bilinearly to twice the model size,
    then 2 x 2 averaged: a downscale that keeps edges (what distortion is read from), built
    from operators TensorRT supports (its Resize has no antialias mode), and cheap on a CPU:
    ~12 ms for a 2048 px image in ONNX Runtime on one thread, against ~45 ms for a full-image
    average pool or a resize to four times the model size. Training and every exported graph
    use this one function (the CPU graph through `quarter_to_model_input`, its second half).
    """
    return quarter_to_model_input(image[:, :, ::2, ::2], in_h, in_w)


def quarter_to_model_input(quarter: torch.Tensor, in_h: int, in_w: int) -> torch.Tensor:
    """`to_model_input` from every other pixel and row, ``image[:, :, ::2, ::2]``: the CPU graph
    takes that (the runtime slices it in numpy, 4x faster than ONNX Runtime's strided Slice)."""
    mid = F.interpolate(quarter.to(torch.float32), size=(in_h * 2, in_w * 2), mode="bilinear", align_corners=False)
    small = F.avg_pool2d(mid, kernel_size=2, stride=2)
    return small * (1.0 / 127.5) - 1.0


class LensNet(nn.Module):
    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config or ModelConfig()
        cfg = self.config
        self.to8, self.to32, c8, c32, stride = _backbone(cfg.backbone, cfg.width_mult)
        h32, w32 = -(-cfg.input_height // stride), -(-cfg.input_width // stride)
        self.param_head = nn.Sequential(nn.Flatten(), nn.Linear(c32 * h32 * w32, 256), nn.ReLU(inplace=True), nn.Linear(256, NUM_PARAMS))
        self.flow_head = nn.Sequential(_conv(c8 + 3, 32), nn.Conv2d(32, 2, 3, 1, 1))
        for last in (self.param_head[-1], self.flow_head[-1]):
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        self.register_buffer("param_scale", torch.tensor(_PARAM_SCALE, dtype=torch.float32), persistent=False)
        if cfg.param_head not in ("displacement", "coefficients"):
            raise ValueError(f"unknown param_head {cfg.param_head!r}")
        radii = torch.tensor(_RADII, dtype=torch.float64)
        basis = torch.stack([radii**3, radii**5, radii**7], dim=1)  # d(r) = k1 r^3 + k2 r^5 + k3 r^7
        self.register_buffer("disp_scale", torch.tensor(_DISP_SCALE, dtype=torch.float32), persistent=False)
        self.register_buffer("disp_to_k", torch.linalg.inv(basis).T.float().contiguous(), persistent=False)

    def forward(self, small: torch.Tensor, aspect: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``small``: `to_model_input` output ``(B, 3, h, w)``; ``aspect``: ``(B,)`` H / W of
        the full-resolution images. Returns params ``(B, 8)`` and flow ``(B, 2, h/8, w/8)``."""
        coords = coordinate_channels(small.shape[0], small.shape[2], small.shape[3], aspect)
        f8 = self.to8(torch.cat([small, coords], dim=1))
        raw = torch.tanh(self.param_head(self.to32(f8)))
        z = raw * self.param_scale
        radial = (raw[:, :3] * self.disp_scale) @ self.disp_to_k if self.config.param_head == "displacement" else z[:, :3]
        params = torch.cat([radial, z[:, 3:5], torch.exp(z[:, 5:6]), z[:, 6:]], dim=1)
        c8 = F.interpolate(coords, size=f8.shape[-2:], mode="bilinear", align_corners=True)
        flow = torch.tanh(self.flow_head(torch.cat([f8, c8], dim=1))) * self.config.max_residual_px
        return params, flow
