"""How `--batch` moves `lens run`'s GPU throughput: the same files run at each batch size in
turn, ROUNDS times, in one process (a GPU's throughput drifts between processes), and the
median of each size's per-round ratio to batch 1.

    python tools/bench_gpu_batch.py [N] [ROUNDS] [WORKERS] [CODEC]

N photos of 2048 x 1367 (default 240), torch backend on CUDA, CODEC gpu (default) or cpu.
Needs a CUDA GPU, torch, and nvImageCodec for the GPU codec.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gpu import make_inputs  # noqa: E402

from lens.runtime.backends import DEFAULT_BUILD, TorchBackend  # noqa: E402
from lens.runtime.pipeline import RunOptions, run  # noqa: E402

BATCHES = (1, 4, 16, 32)


def main(n: int = 240, rounds: int = 3, workers: int = 14, codec: str = "gpu") -> dict:
    assert torch.cuda.is_available(), "bench_gpu_batch needs a CUDA GPU"
    backend = TorchBackend(DEFAULT_BUILD / "checkpoint.pt", "cuda")
    rates: dict[int, list[float]] = {b: [] for b in BATCHES}
    with tempfile.TemporaryDirectory() as tmp:
        src = make_inputs(Path(tmp) / "in", n, (2048, 1367), workers)[0].parent
        for b in BATCHES:  # warm-up: CUDA graphs are captured per batch shape
            run(src, Path(tmp) / f"warm{b}", backend, RunOptions(batch=b, workers=workers, codec=codec), {})
        for r in range(rounds):
            order = BATCHES if r % 2 == 0 else BATCHES[::-1]  # alternate: no size always runs first
            for b in order:
                out = Path(tmp) / f"b{b}"
                summary = run(src, out, backend, RunOptions(batch=b, workers=workers, codec=codec), {})
                rates[b].append(summary["throughput"]["images_per_s"])
                shutil.rmtree(out)
    result = {
        "gpu": torch.cuda.get_device_name(0), "codec": codec, "images": n, "workers": workers,
        "images_per_s": {b: [round(v, 1) for v in rates[b]] for b in BATCHES},
        "over_batch_1_median": {b: round(float(np.median(np.array(rates[b]) / np.array(rates[1]))), 3) for b in BATCHES},
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    args = sys.argv[1:]
    main(*(int(a) for a in args[:3]), *args[3:4])
