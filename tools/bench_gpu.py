"""GPU throughput of `lens run` against a naive per-image loop and the GPU JPEG floor, same
files, same process (issue bars: >= 20x the naive loop, >= 0.5x the decode + encode floor).

    python tools/bench_gpu.py [N_2048] [N_4000] [WORKERS]

- naive loop: Pillow decode, eager torch graph on the GPU (one image), Pillow encode, one
  thread;
- floor: nvJPEG batch decode + encode of the same files through torchvision (no model, no
  warp, no file writes): what a GPU pipeline cannot beat;
- lens: the `lens run` pipeline with the best backend this machine has (TensorRT engine or
  ONNX Runtime CUDA from a build when available, else the torch backend on CUDA), batch 8.

Needs a CUDA GPU, torch and torchvision.
"""
from __future__ import annotations

import io
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from lens.runtime.backends import DEFAULT_BUILD, TorchBackend
from lens.runtime.pipeline import RunOptions, run

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def make_inputs(folder: Path, n: int, size: tuple[int, int], threads: int) -> list[Path]:
    folder.mkdir(parents=True)
    srcs = [cv2.resize(cv2.imread(str(p)), size, interpolation=cv2.INTER_CUBIC) for p in sorted(SAMPLES.glob("*.jpg"))]

    def one(i: int) -> Path:
        path = folder / f"img{i:04d}.jpg"
        cv2.imwrite(str(path), np.roll(srcs[i % len(srcs)], i * 7, axis=1), [cv2.IMWRITE_JPEG_QUALITY, 92])
        return path

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(n)))


def floor(files: list[Path], batch: int = 16) -> float:
    import torchvision
    from torchvision.io import decode_jpeg, encode_jpeg

    datas = [torchvision.io.read_file(str(p)) for p in files]
    decode_jpeg(datas[:2], device="cuda")  # warm-up
    torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(0, len(datas), batch):
        images = decode_jpeg(datas[i : i + batch], device="cuda")
        encoded = encode_jpeg(images, quality=95)
        _ = [e.cpu() for e in encoded]
    torch.cuda.synchronize()
    return len(datas) / (time.perf_counter() - t)


def naive(files: list[Path], graph, out: Path) -> float:
    out.mkdir(parents=True, exist_ok=True)
    mode = torch.tensor([-1], device="cuda")

    def one(p: Path) -> None:
        rgb = np.asarray(Image.open(p).convert("RGB"))
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None].cuda()
        with torch.no_grad():
            corrected = graph(x, mode)[-1][0].permute(1, 2, 0).cpu().numpy()
        buf = io.BytesIO()
        Image.fromarray(corrected).save(buf, format="JPEG", quality=95, subsampling=0)
        (out / p.name).write_bytes(buf.getvalue())

    one(files[0])  # warm-up
    torch.cuda.synchronize()
    t = time.perf_counter()
    for p in files:
        one(p)
    return len(files) / (time.perf_counter() - t)


def main(n_small: int = 96, n_large: int = 32, workers: int = 14) -> None:
    assert torch.cuda.is_available(), "bench_gpu needs a CUDA GPU"
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, {workers} worker threads")
    backend = TorchBackend(DEFAULT_BUILD / "checkpoint.pt", "cuda")
    graph = backend.graph
    with tempfile.TemporaryDirectory() as tmp:
        for (w, h), n in (((2048, 1367), n_small), ((4000, 3000), n_large)):
            files = make_inputs(Path(tmp) / f"in{w}", n, (w, h), workers)
            run(Path(tmp) / f"in{w}", Path(tmp) / f"warm{w}", backend, RunOptions(batch=8, workers=workers), {})  # warm-up
            lens_rate = run(Path(tmp) / f"in{w}", Path(tmp) / f"lens{w}", backend, RunOptions(batch=8, workers=workers), {})["throughput"]["images_per_s"]
            naive_rate = naive(files[: min(12, n)], graph, Path(tmp) / f"naive{w}")
            floor_rate = floor(files)
            print(f"{w}x{h}, {n} images: lens run (torch backend, batch 8) {lens_rate:.1f} img/s; naive loop {naive_rate:.1f} img/s; "
                  f"GPU decode+encode floor {floor_rate:.1f} img/s; lens/naive {lens_rate / naive_rate:.1f}x (bar 20x); "
                  f"lens/floor {lens_rate / floor_rate:.2f}x (bar 0.5x)", flush=True)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:4]))
