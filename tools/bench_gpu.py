"""GPU throughput of `lens run` against a naive per-image loop and the GPU JPEG floor, same
files, same process (issue bars: >= 20x the naive loop, >= 0.5x the decode + encode floor).

    python tools/bench_gpu.py [N_2048] [N_4000] [WORKERS]

- naive loop: Pillow decode, eager torch graph on the GPU (one image), Pillow encode, one
  thread;
- floors: batch GPU decode + encode of the same files with no model, no warp and no file
  writes, what a GPU pipeline cannot beat: nvImageCodec at lens's output settings (quality 95,
  4:4:4), by one thread and by as many threads as lens's GPU codec path (the bar is taken
  against the higher of the two), and torchvision's nvJPEG (quality 95, its default 4:2:0
  chroma, which lens does not write); then lens and the nvImageCodec floors again in turn,
  three rounds, and the median of their per-round ratios (the floor alone moved by up to 2x
  between processes);
- lens: the `lens run` pipeline with the torch backend on CUDA, with the GPU JPEG codec
  (`--codec gpu`, batch 16; of the WORKERS threads it uses `pipeline.GPU_CODEC_THREADS`) and
  with CPU codecs (`--codec cpu`, batch 8), plus the mean
  per-image stage times from its records; and, reported apart, with the opt-in line fit
  (`--refine lines`: CPU codec, the fit in WORKERS processes, OpenCV re-warp where used).

Needs a CUDA GPU, torch and torchvision; nvImageCodec for the GPU codec rows.
"""
from __future__ import annotations

import io
import json
import shutil
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
from lens.runtime.pipeline import GPU_CODEC_THREADS, RunOptions, run

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


def floor_nvimgcodec(files: list[Path], batch: int = 16, threads: int = 1) -> float:
    """nvImageCodec decode + encode of ``files`` in batches, through lens's codec, by
    ``threads`` threads side by side (each batch decoded, then encoded once decoded)."""
    from lens.runtime.gpu_jpeg import shared_codec

    codec = shared_codec()
    datas = [p.read_bytes() for p in files]
    groups = [datas[i : i + batch] for i in range(0, len(datas), batch)]

    def work(k: int) -> None:
        for group in groups[k::threads]:
            images, ready = codec.decode(group)
            codec.encode(images, 95, after=ready)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, range(threads)))  # warm-up
        torch.cuda.synchronize()
        t = time.perf_counter()
        list(pool.map(work, range(threads)))
        torch.cuda.synchronize()
    return len(datas) / (time.perf_counter() - t)


def rounds_against_floor(src: Path, files: list[Path], tmp: Path, backend, workers: int, rounds: int = 3) -> dict:
    """`lens run` (GPU codec) and the nvImageCodec floors in turn, ``rounds`` times, and the
    median of the per-round ratios of lens to the higher floor: the floor moved by up to 2x from
    one process to the next (914 to 1806 images/s at 2048 x 1367), so a lens run and a floor run
    taken minutes apart gave ratios as far apart."""
    options = RunOptions(batch=16, workers=workers, codec="gpu")
    lens_rates, floors, ratios = [], [], []
    for i in range(rounds):
        out = tmp / f"round{i}"
        lens_rates.append(run(src, out, backend, options, {})["throughput"]["images_per_s"])
        shutil.rmtree(out)
        floors.append(max(floor_nvimgcodec(files), floor_nvimgcodec(files, threads=GPU_CODEC_THREADS)))
        ratios.append(lens_rates[-1] / floors[-1])
    return {"rounds_lens": [round(v, 1) for v in lens_rates], "rounds_best_floor": [round(v, 1) for v in floors],
            "rounds_ratio": [round(v, 3) for v in ratios], "lens_over_best_nvimgcodec_floor_median": round(float(np.median(ratios)), 3)}


def stage_means(out: Path) -> dict[str, float]:
    records = [json.loads(line) for line in (out / "lens-run" / "images.jsonl").read_text().splitlines()]
    keys = sorted({k for r in records for k in r.get("timings_ms", {})})
    return {k: round(float(np.mean([r["timings_ms"][k] for r in records if k in r["timings_ms"]])), 2) for k in keys}


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


def main(n_small: int = 480, n_large: int = 96, workers: int = 14) -> None:
    assert torch.cuda.is_available(), "bench_gpu needs a CUDA GPU"
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, {workers} worker threads", flush=True)
    backend = TorchBackend(DEFAULT_BUILD / "checkpoint.pt", "cuda")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for (w, h), n in (((2048, 1367), n_small), ((4000, 3000), n_large)):
            src = Path(tmp) / f"in{w}"
            files = make_inputs(src, n, (w, h), workers)
            row = {"size": f"{w}x{h}", "images": n}
            # the line fit is opt-in on GPU backends (`--refine lines`: CPU codec, CPU fit in
            # worker processes); its row is reported, not counted as lens's best
            for codec, batch, refine in (("gpu", 16, "auto"), ("cpu", 8, "auto"), ("cpu", 8, "lines")):
                key = f"lens_{codec}_codec" + ("_line_fit" if refine == "lines" else "")
                try:
                    options = RunOptions(batch=batch, workers=workers, codec=codec, refine=refine)
                    run(src, Path(tmp) / f"warm{w}{key}", backend, options, {})  # warm-up (cudnn autotune, codec init)
                    out = Path(tmp) / f"{key}{w}"
                    summary = run(src, out, backend, options, {})
                    row[key] = summary["throughput"]["images_per_s"]
                    row[f"stages_{key}_ms"] = stage_means(out)
                except Exception as exc:  # report and go on: one missing row must not lose the others
                    row[key] = f"failed: {type(exc).__name__}: {exc}"
            row["naive"] = naive(files[: min(12, n)], backend.graph, Path(tmp) / f"naive{w}")
            row["floor_torchvision_420"] = floor(files)
            # one thread, and as many as lens's GPU codec path uses: the bar is taken against the higher
            for key, threads in (("floor_nvimgcodec_444", 1), ("floor_nvimgcodec_444_threaded", GPU_CODEC_THREADS)):
                try:
                    row[key] = floor_nvimgcodec(files, threads=threads)
                except Exception as exc:
                    row[key] = f"failed: {type(exc).__name__}: {exc}"
            best = max((v for k, v in row.items() if k.startswith("lens_") and not k.endswith("_line_fit") and isinstance(v, float)), default=None)
            if best:
                row["lens_over_naive"] = round(best / row["naive"], 2)
                for k in ("floor_torchvision_420", "floor_nvimgcodec_444", "floor_nvimgcodec_444_threaded"):
                    if isinstance(row[k], float):
                        row[f"lens_over_{k}"] = round(best / row[k], 3)
                floors = [row[k] for k in ("floor_nvimgcodec_444", "floor_nvimgcodec_444_threaded") if isinstance(row[k], float)]
                if floors:
                    row["lens_over_best_nvimgcodec_floor"] = round(best / max(floors), 3)
            try:
                row.update(rounds_against_floor(src, files, Path(tmp) / f"rounds{w}", backend, workers))
            except Exception as exc:
                row["rounds_ratio"] = f"failed: {type(exc).__name__}: {exc}"
            row["backend_state"] = backend.describe()
            print(json.dumps(row), flush=True)
            results.append(row)
    return results


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:4]))
