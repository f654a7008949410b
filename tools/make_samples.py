"""Regenerate samples/: public-domain photos (lens/assets/photos) upscaled to 2048 px wide and
distorted with workload-like barrel coefficients, so `lens run` has realistic inputs.

    python tools/make_samples.py
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from lens.geometry import LensParams, distortion_grid, optimal_new_camera
from lens.runtime.io import DecodedImage, write_image
from lens.runtime.sampling import warp_with_grid

ROOT = Path(__file__).resolve().parents[1]
# (source, k1, k2, crop to 3:2 landscape)
SOURCES = [("rocket.jpg", -0.20, 0.40), ("coffee.jpg", -0.28, 0.30), ("astronaut.jpg", -0.12, 0.15)]


def main() -> None:
    out = ROOT / "samples"
    out.mkdir(exist_ok=True)
    for name, k1, k2 in SOURCES:
        rgb = cv2.cvtColor(cv2.imread(str(ROOT / "lens" / "assets" / "photos" / name)), cv2.COLOR_BGR2RGB)
        h, w = rgb.shape[:2]
        if h > w * 2 / 3:  # crop to the workload's landscape 3:2
            top = (h - round(w * 2 / 3)) // 2
            rgb = rgb[top : top + round(w * 2 / 3)]
        rgb = cv2.resize(rgb, (2048, round(rgb.shape[0] * 2048 / rgb.shape[1])), interpolation=cv2.INTER_CUBIC)
        height, width = rgb.shape[:2]
        params = LensParams(k1=k1, k2=k2).to_tensor().double()
        # alpha = 1 framing: the source photo spans every ray the distorted frame sees.
        grid, _ = distortion_grid(params, optimal_new_camera(params, height, width, alpha=1.0), height, width)
        distorted = warp_with_grid(rgb, grid[0].float().numpy())
        write_image(out / f"{Path(name).stem}.jpg", DecodedImage(np.ascontiguousarray(distorted)), quality=92)
        print(f"samples/{Path(name).stem}.jpg  {width}x{height}  k1={k1} k2={k2}")


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
