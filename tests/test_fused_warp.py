"""The torch backend's warp on CUDA (`lens.runtime.fused_warp`, one Triton kernel) against the
exported graph's (`LensGraph`: the fused grid, `grid_sample`, rounding): compiled on a GPU,
interpreted by Triton on a CPU (conftest.py)."""
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from lens.export.graph import LensGraph  # noqa: E402
from lens.geometry import fuse_residual, optimal_new_camera, parametric_grid, residual_to_normalized, sample  # noqa: E402
from lens.export.modules import to_uint8  # noqa: E402
from lens.runtime.backends import DEFAULT_BUILD  # noqa: E402
from lens.training.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


# Without a GPU, conftest.py has Triton interpret its kernels (on CPU tensors); with one, the
# kernel is compiled and run on it.
DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
if DEVICE == "cuda" and not torch.cuda.is_available():
    pytest.skip("the compiled kernel needs a CUDA GPU (TRITON_INTERPRET=1 runs it on the CPU)", allow_module_level=True)


@pytest.fixture
def kernel():
    from lens.runtime import fused_warp

    return fused_warp


def _photos(height: int, width: int) -> torch.Tensor:
    """Two sample photos ``(2, H, W, 3)`` uint8, RGB."""
    paths = sorted(SAMPLES.glob("*.jpg"))[:2]
    return torch.from_numpy(np.stack([cv2.resize(cv2.imread(str(p)), (width, height), interpolation=cv2.INTER_AREA)[..., ::-1].copy() for p in paths]))


def _assert_close(fused: torch.Tensor, reference: torch.Tensor) -> None:
    """At most one grey level anywhere (a value on the other side of a rounding), and rarely."""
    diff = (fused.to(torch.int16) - reference.to(torch.int16)).abs()
    assert diff.max().item() <= 1
    assert (diff > 0).float().mean().item() < 1e-3


def test_fused_warp_is_the_default_models_warp_in_every_mode(kernel):
    ckpt = load_checkpoint(DEFAULT_BUILD / "checkpoint.pt")
    graph = LensGraph(model_from_checkpoint(ckpt), use_residual=ckpt["stage"] != "param").eval()
    for height, width in ((48, 71), (71, 48)):  # landscape and portrait
        photos = _photos(height, width)
        for mode in (-1, 0, 2):  # automatic, forced hybrid (the residual flow), conservative
            modes = torch.full((2,), mode, dtype=torch.int64)
            with torch.no_grad():
                *outputs, corrected = graph(photos.permute(0, 3, 1, 2).contiguous(), modes)
                *decided, params, camera, flow = graph.decisions(photos.permute(0, 3, 1, 2), modes)
            for a, b in zip(outputs, decided):
                assert torch.equal(a, b)
            coefficients = kernel.warp_coefficients(params, camera, height, width)
            fused = kernel.fused_warp(photos.to(DEVICE), coefficients.to(DEVICE), flow.to(DEVICE)).cpu()
            assert fused.shape == photos.shape and fused.dtype == torch.uint8
            _assert_close(fused, corrected.permute(0, 2, 3, 1))


def test_fused_warp_with_a_strong_lens_a_large_residual_and_a_wild_lens(kernel):
    """Samples beyond the photo (zeros), a residual of a few pixels, and a lens whose grid
    lands far outside (clamped before the kernel's integer conversion) all match the graph."""
    height, width = 53, 80
    photos = _photos(height, width)
    params = torch.tensor([[-0.35, 0.12, -0.01, 0.004, -0.003, 0.8, 0.02, -0.015], [1e6, 3e4, 0.0, 0.5, 0.5, 1.0, 0.0, 0.0]])
    camera = optimal_new_camera(params, height, width)
    camera[1] = torch.tensor([0.2 * width, 0.2 * width, (width - 1) / 2, (height - 1) / 2])  # a wide view: the corners' rays far out
    flow = torch.randn(2, 2, 7, 10, generator=torch.Generator().manual_seed(3)) * 2.0
    grid = fuse_residual(parametric_grid(params, camera, height, width), flow)
    reference = to_uint8(sample(photos.permute(0, 3, 1, 2).float(), grid)).permute(0, 2, 3, 1)
    coefficients = kernel.warp_coefficients(params, camera, height, width)
    fused = kernel.fused_warp(photos.to(DEVICE), coefficients.to(DEVICE), residual_to_normalized(flow).to(DEVICE)).cpu()
    _assert_close(fused, reference)
    assert (reference[1] == 0).float().mean() > 0.5  # the wild lens samples mostly outside


def test_fused_warp_refuses_what_it_cannot_take(kernel):
    coefficients = torch.zeros(1, 12, device=DEVICE)
    flow = torch.zeros(1, 2, 2, 2, device=DEVICE)
    with pytest.raises(ValueError, match="uint8"):
        kernel.fused_warp(torch.zeros(1, 8, 8, 3, device=DEVICE), coefficients, flow)
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        kernel.fused_warp(torch.zeros(1, 8, 8, 4, dtype=torch.uint8, device=DEVICE), coefficients, flow)
