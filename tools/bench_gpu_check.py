"""What the host's check of JPEG data (`lens.runtime.io.check_jpeg_data`, on the GPU codec
path's own threads) costs `lens run` on a GPU: runs with the check and with it replaced by a
no-op, in turn, ROUNDS times in one process, and the median of the per-round ratios; plus
the check's mean time per photo and how long writes waited for it. THREADS (e.g. 4,12): runs
with that many checking threads each, besides lens's own number (`jpeg_check_threads`).

    python tools/bench_gpu_check.py [N_2048] [N_4000] [ROUNDS] [WORKERS] [THREADS]

Torch backend on CUDA, GPU codec, batch 16. Needs a CUDA GPU, torch and nvImageCodec.
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
from bench_gpu import make_inputs, stage_means  # noqa: E402

from lens.runtime import pipeline  # noqa: E402
from lens.runtime.backends import DEFAULT_BUILD, TorchBackend  # noqa: E402
from lens.runtime.pipeline import RunOptions, jpeg_check_threads, run  # noqa: E402


def main(n_small: int = 480, n_large: int = 96, rounds: int = 3, workers: int = 14, threads: str = "") -> list[dict]:
    assert torch.cuda.is_available(), "bench_gpu_check needs a CUDA GPU"
    backend = TorchBackend(DEFAULT_BUILD / "checkpoint.pt", "cuda")
    options = RunOptions(batch=16, workers=workers, codec="gpu")
    checked, default_threads = pipeline.check_jpeg_data, jpeg_check_threads()
    # name -> (check, threads)
    variants = {"checked": (checked, default_threads), "unchecked": (lambda data: None, 1),
                **{f"checked_{t}_threads": (checked, int(t)) for t in threads.split(",") if t and int(t) != default_threads}}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for (w, h), n in (((2048, 1367), n_small), ((4000, 3000), n_large)):
            if n == 0:
                continue
            src = make_inputs(Path(tmp) / f"in{w}", n, (w, h), workers)[0].parent
            run(src, Path(tmp) / "warm", backend, options, {})
            rates = {name: [] for name in variants}
            stages = {}
            for r in range(rounds):
                for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
                    check, count = variants[name]
                    pipeline.check_jpeg_data, pipeline.jpeg_check_threads = check, (lambda cores=None, count=count: count)
                    out = Path(tmp) / name
                    try:
                        rates[name].append(run(src, out, backend, options, {})["throughput"]["images_per_s"])
                    finally:
                        pipeline.check_jpeg_data, pipeline.jpeg_check_threads = checked, jpeg_check_threads
                    if name == "checked":
                        stages = stage_means(out)
                    shutil.rmtree(out)
            base = np.array(rates["unchecked"])
            row = {"gpu": torch.cuda.get_device_name(0), "size": f"{w}x{h}", "images": n, "check_threads": default_threads,
                   "images_per_s": rates, "stages_checked_ms": stages,
                   **{f"{name}_over_unchecked_median": round(float(np.median(np.array(v) / base)), 3) for name, v in rates.items() if name != "unchecked"},
                   "ratios_checked": [round(float(v), 3) for v in np.array(rates["checked"]) / base]}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


if __name__ == "__main__":
    args = sys.argv[1:]
    main(*(int(a) for a in args[:4]), *args[4:5])
