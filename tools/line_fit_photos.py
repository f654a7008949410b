"""The line fit on real photos: how often it is used, and whether a used fit is ever worse than
the network's lens (the trust check synthetic scenes cannot give: real fur, grass and wood
grain make edges that no scene generator draws).

    python tools/line_fit_photos.py PHOTO_DIR [--regime workload] [--lenses 16] [--width 2048]

Each photo (any size; resized to ``--width`` px wide) is distorted with ``--lenses`` seeded lenses of
the regime, exactly as the synthetic pairs are made, and the network's lens (the shipped
model's typical prediction) is refitted to its lines. Per photo: fits used, their mean EPE
against the lens applied, the network's, and the worst used fit minus the network on the
same image (positive: the fit made that image worse). A photo with lines of its own lens
distortion shows a floor there: the EPE is against the lens applied on top.

Line-free photos to try come with scikit-image (``pip download scikit-image``, then
``skimage/data/*.png`` from the wheel: chelsea, grass, gravel, coins, moon, ...); brick.png
and motorcycle_left.png have real straight lines.
"""
from __future__ import annotations

import argparse
import zlib
from pathlib import Path

import cv2
import numpy as np
import torch

from lens.runtime.plumb_line import refine_with_lines
from lens.training.losses import endpoint_error, warp_points
from lens.training.synth import make_pairs, sample_params

# the shipped model's prediction for most photos (MODEL_CARD.md: it learned the typical lens)
NETWORK = np.array([-0.122, 0.145, 0.161, -0.001, 0.0, 1.032, 0.0, 0.007])
WIDTH = 2048


def _epe(params: np.ndarray, true: torch.Tensor, height: int, width: int) -> float:
    p = torch.tensor(np.asarray(params)[None], dtype=torch.float32)
    return float(endpoint_error(warp_points(p, height, width), true, height, width))


def photo_report(path: Path, regime: str, lenses: int, width: int = WIDTH) -> dict:
    rgb = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    height = int(round(rgb.shape[0] * width / rgb.shape[1] / 2) * 2)
    source = torch.from_numpy(cv2.resize(rgb, (width, height), interpolation=cv2.INTER_CUBIC)).permute(2, 0, 1)[None].float()
    params = sample_params(regime, lenses, np.random.default_rng(zlib.crc32(path.name.encode())), height, width)
    used, codes = [], {}
    for k in range(lenses):
        distorted, _ = make_pairs(source, params[k : k + 1], with_target=False)
        grey = cv2.cvtColor(distorted[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy(), cv2.COLOR_RGB2GRAY)
        fit = refine_with_lines(grey, NETWORK)
        codes[fit.code] = codes.get(fit.code, 0) + 1
        true = warp_points(params[k : k + 1], height, width)
        if fit.accepted:
            used.append((_epe(fit.params, true, height, width), _epe(NETWORK, true, height, width)))
    return {"photo": path.name, "used": len(used), "lenses": lenses, "codes": codes,
            "fit_epe": float(np.mean([u[0] for u in used])) if used else None,
            "network_epe": float(np.mean([u[1] for u in used])) if used else None,
            "worst_vs_network": max((u[0] - u[1] for u in used), default=None)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", type=Path)
    parser.add_argument("--regime", default="workload", choices=("workload", "general"))
    parser.add_argument("--lenses", type=int, default=16)
    parser.add_argument("--width", type=int, default=WIDTH, help="photo width (px) the lenses are applied at; EPEs are in its pixels")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    fmt = lambda v: "   -  " if v is None else f"{v:6.2f}"  # noqa: E731
    print(f"{'photo':24s} used  fit EPE  network  worst fit-network  outcomes")
    for path in sorted(p for p in args.photos.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")):
        r = photo_report(path, args.regime, args.lenses, args.width)
        print(f"{r['photo']:24s} {r['used']:2d}/{r['lenses']:<2d} {fmt(r['fit_epe'])}  {fmt(r['network_epe'])}  {fmt(r['worst_vs_network'])}"
              f"             {', '.join(f'{c} {n}' for c, n in sorted(r['codes'].items()))}", flush=True)


if __name__ == "__main__":
    main()
