"""How well the pseudo-label fit recovers known lenses: procedural scenes distorted by seeded
workload-like lenses exactly as the synthetic pairs are made, written as pairs of files
(lossless PNG, or JPEG as the workload's are) and labelled through `lens.training.pseudo_label.label_pairs` (the path of
`lens data pseudo-label`, worker processes included), scored by endpoint error at 2048 px wide
(issue bar: under 0.3 px).

    python tools/pseudo_label_accuracy.py [--pairs 16] [--seed 0] [--workers 1] [--jpeg-quality Q]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from lens.geometry import LensParams
from lens.training.pairs import Pair
from lens.training.pseudo_label import FitResult, label_pairs
from lens.training.scenes import render_scene
from lens.training.synth import make_pairs

HEIGHT, WIDTH = 1024, 1536  # the pairs' size; errors are measured at 2048 px wide


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="label_pairs' worker processes (1: in this process)")
    parser.add_argument("--jpeg-quality", type=int, default=0, help="write the pairs as JPEG of this quality (0: lossless PNG)")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    lenses, pairs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.pairs):
            k1, k2 = float(rng.uniform(-0.35, 0.0)), float(rng.uniform(0.0, 0.6))  # the workload-like regime's ranges
            lenses.append(LensParams(k1=k1, k2=k2))
            scene = torch.from_numpy(render_scene(100 + i, HEIGHT, WIDTH)).permute(2, 0, 1)[None].float()
            files = []
            for name, x in zip(("original", "generated"), make_pairs(scene, lenses[-1].to_tensor())):
                files.append(Path(tmp) / f"scene{100 + i}_{name}.{'jpg' if args.jpeg_quality else 'png'}")
                cv2.imwrite(str(files[-1]), cv2.cvtColor(x[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy(), cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, args.jpeg_quality] if args.jpeg_quality else [])
            pairs.append(Pair(f"scene{100 + i}", *files, shoot=f"scene{100 + i}"))
        errors, start = [], time.perf_counter()
        for lens, record in zip(lenses, label_pairs(pairs, args.workers)):
            p = record["params"]
            fit = FitResult(LensParams(**p), record["zoom"], record["fit_residual_grey"])
            errors.append(fit.epe_px(lens.to_tensor(), round(2048 * HEIGHT / WIDTH), 2048))
            print(f"{record['pair_id']}: k1 {lens.k1:.3f} k2 {lens.k2:.3f} -> {p['k1']:.3f} {p['k2']:.3f}, "
                  f"EPE {errors[-1]:.3f} px, residual {record['fit_residual_grey']:.2f} grey levels", flush=True)
    e = np.array(errors)
    print(f"{len(e)} pairs ({f'JPEG {args.jpeg_quality}' if args.jpeg_quality else 'PNG'}), {args.workers} worker(s): EPE mean {e.mean():.3f} px, max {e.max():.3f}, over 0.3 px: {(e > 0.3).sum()} "
          f"({(time.perf_counter() - start) / len(e):.1f} s per pair of wall time)")


if __name__ == "__main__":
    main()
