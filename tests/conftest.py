import os
from pathlib import Path

import cv2
import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[1] / "lens" / "assets" / "photos"

# Without a GPU, Triton kernels (`lens.runtime.fused_warp`) run in Triton's interpreter, which
# takes CPU tensors: Triton reads this when a kernel is defined, before any test imports one.
if not Path("/dev/nvidia0").exists():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def photo_2048() -> np.ndarray:
    """A real photograph (lens/assets/photos/README.md) resized to 2048 px wide, BGR uint8."""
    img = cv2.imread(str(DATA / "rocket.jpg"))
    h, w = img.shape[:2]
    return cv2.resize(img, (2048, round(h * 2048 / w)), interpolation=cv2.INTER_CUBIC)
