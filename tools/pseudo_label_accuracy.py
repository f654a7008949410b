"""How well the pseudo-label fit (`lens.training.pseudo_label.fit_pair`) recovers known lenses:
procedural scenes distorted by seeded workload-like lenses exactly as the synthetic pairs are
made, fitted, and scored by endpoint error at 2048 px wide (issue bar: under 0.3 px).

    python tools/pseudo_label_accuracy.py [--pairs 16] [--seed 0]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lens.geometry import LensParams
from lens.training.pseudo_label import fit_pair
from lens.training.scenes import render_scene
from lens.training.synth import make_pairs

HEIGHT, WIDTH = 1024, 1536  # the pairs' size; errors are measured at 2048 px wide


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    errors, start = [], time.perf_counter()
    for i in range(args.pairs):
        k1, k2 = float(rng.uniform(-0.35, 0.0)), float(rng.uniform(0.0, 0.6))  # the workload-like regime's ranges
        params = LensParams(k1=k1, k2=k2).to_tensor()
        scene = torch.from_numpy(render_scene(100 + i, HEIGHT, WIDTH)).permute(2, 0, 1)[None].float()
        distorted, target = make_pairs(scene, params)
        fit = fit_pair(*(x[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy() for x in (distorted, target)))
        errors.append(fit.epe_px(params, round(2048 * HEIGHT / WIDTH), 2048))
        print(f"scene {100 + i}: k1 {k1:.3f} k2 {k2:.3f} -> {fit.params.k1:.3f} {fit.params.k2:.3f}, "
              f"EPE {errors[-1]:.3f} px, residual {fit.residual_grey:.2f} grey levels", flush=True)
    e = np.array(errors)
    print(f"{len(e)} pairs: EPE mean {e.mean():.3f} px, max {e.max():.3f}, over 0.3 px: {(e > 0.3).sum()} "
          f"({(time.perf_counter() - start) / len(e):.1f} s per pair)")


if __name__ == "__main__":
    main()
