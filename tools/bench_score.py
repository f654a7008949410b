"""Throughput of `lens score` at 2048 x 1366 on this machine (issue bar: >= 5 images/s).

    python tools/bench_score.py [N]

Writes N synthetic pairs (JPEG, quality 95) to a temporary folder, then times score_folder
(decode + score, both threads) over them; a second pass with one thread is the baseline.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from lens.qa.score import score_folder
from lens.runtime.io import DecodedImage, write_image
from lens.training.batches import synthetic_samples


def main(n: int = 20) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pred, gt = Path(tmp) / "pred", Path(tmp) / "gt"
        for i, s in enumerate(synthetic_samples("workload", n, seed=99)):
            write_image(pred / f"{i:03d}.jpg", DecodedImage(s.original))
            write_image(gt / f"{i:03d}.jpg", DecodedImage(s.target))
        for workers in (1, 2):
            t = time.perf_counter()
            rows, _ = score_folder(pred, gt, workers=workers)
            dt = time.perf_counter() - t
            print(f"workers={workers}: {len(rows)} images in {dt:.2f} s = {len(rows) / dt:.1f} images/s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
