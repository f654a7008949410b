"""The geometry exported to ONNX stays dynamic and matches torch."""
import numpy as np
import pytest
import torch

from lens.export.modules import ParametricWarp
from lens.export.onnx_export import export_onnx, symbolic_shapes
from lens.geometry import LensParams

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def warp_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "warp.onnx"
    image = torch.randint(0, 256, (2, 3, 48, 64), dtype=torch.uint8)
    params = LensParams(k1=-0.2, k2=0.4).to_tensor(2)
    export_onnx(
        ParametricWarp(jacobian_stride=4), (image, params), path,
        input_names=["image", "params"], output_names=["corrected", "grid", "safety"],
        dynamic_axes={"image": {0: "B", 2: "H", 3: "W"}, "params": {0: "B"}},
    )
    return path


def test_exported_shapes_are_symbolic(warp_onnx):
    shapes = symbolic_shapes(warp_onnx)
    assert shapes["image"] == ["B", 3, "H", "W"]
    assert shapes["params"] == ["B", 8]
    assert shapes["grid"] == ["B", "H", "W", 2]


@pytest.mark.parametrize("size", [(67, 101), (120, 160)])
def test_one_onnx_file_runs_at_two_sizes_and_matches_torch(warp_onnx, size):
    h, w = size
    rng = np.random.default_rng(h)
    image = rng.integers(0, 256, (2, 3, h, w), dtype=np.uint8)
    params = torch.cat([LensParams(k1=-0.2, k2=0.4).to_tensor(), LensParams(k1=0.1, p1=0.002, cx=0.01).to_tensor()])
    session = ort.InferenceSession(str(warp_onnx), providers=["CPUExecutionProvider"])
    corrected, grid, safety = session.run(None, {"image": image, "params": params.numpy()})
    ref = ParametricWarp(jacobian_stride=4)(torch.from_numpy(image), params)
    assert corrected.dtype == np.uint8 and corrected.shape == image.shape
    grid_err_px = np.abs(grid - ref[1].numpy()).max() * (max(h, w) - 1) / 2
    assert grid_err_px < 0.01
    assert np.abs(corrected.astype(int) - ref[0].numpy()).max() <= 1
    np.testing.assert_allclose(safety, ref[2].numpy(), atol=1e-4)
