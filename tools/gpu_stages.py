"""Where `lens run`'s time goes on a GPU with the GPU JPEG codec: one process, same files.

    python tools/gpu_stages.py [N_2048] [N_4000] [--lens-only | --no-stages]   # the stage table, JSON lines
    python tools/gpu_stages.py --loop SECONDS                    # lens run again and again (for py-spy)

For each size it prints, each a JSON line:
- ``floor``: nvImageCodec batch decode alone, encode alone (also with 2-4 encoders side by
  side), and both, by one thread and by `GPU_CODEC_THREADS` threads (no model, no files);
- ``model``: the torch backend alone on a decoded batch (`TorchBackend.run_device`: the graph's
  CUDA-graph replay and the fused warp), its outputs on the host;
- ``gpu_loop``: decode, graph and encode of each batch in one thread, no files: what lens's GPU
  work allows when no CPU work competes with it; ``gpu_loop_profile``: its GPU time by kernel
  and the share of its wall time in which the GPU ran any (torch's profiler);
- ``gil``: the share of a call's wall time during which another Python thread ran (1: the call
  releases the GIL while it waits; 0: it holds it);
- ``lens``: `lens run` end to end with the GPU work one batch at a time
  (`runner.SERIAL_DEVICE_WORK`) and not, by GIL switch interval, each twice, with the cores
  its process kept busy (CPU time over wall time) and its mean per-image stage times.

Needs a CUDA GPU, torch and nvImageCodec (the ``gpu-codecs`` extra).
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gpu import floor_nvimgcodec, make_inputs, stage_means  # noqa: E402

import lens  # noqa: E402
from lens.runtime.backends import TorchBackend  # noqa: E402
from lens.runtime.gpu_jpeg import shared_codec  # noqa: E402
from lens.runtime import pipeline  # noqa: E402
from lens.runtime.pipeline import GPU_CODEC_THREADS, RunOptions, run  # noqa: E402

# this checkout's default model, whichever version of lens is imported
CHECKPOINT = Path(__file__).resolve().parents[1] / "lens" / "assets" / "models" / "default" / "checkpoint.pt"


def rate(n: int, fn, repeats: int = 3) -> float:
    """Images per second of ``fn()`` over ``n`` images, best of ``repeats`` (after one warm-up)."""
    fn()
    torch.cuda.synchronize()
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = max(best, n / (time.perf_counter() - t))
    return round(best, 1)


def gil_share(fn, repeats: int = 5) -> float:
    """How much a pure-Python thread advances while ``fn`` runs, against while the main thread
    sleeps as long: ~1 if ``fn`` waits with the GIL released, ~0 if it holds it."""
    count = [0]
    stop = [False]

    def spin():
        while not stop[0]:
            count[0] += 1

    th = threading.Thread(target=spin, daemon=True)
    th.start()
    shares = []
    for _ in range(repeats):
        c0, t0 = count[0], time.perf_counter()
        fn()
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        during = count[0] - c0
        c1 = count[0]
        time.sleep(dt)
        asleep = count[0] - c1
        shares.append(during / max(asleep, 1))
    stop[0] = True
    th.join()
    return round(sorted(shares)[len(shares) // 2], 3)


def profile(fn, top: int = 12) -> dict:
    """GPU time of ``fn()`` by kernel (torch's profiler, CUPTI: nvImageCodec's kernels too) and
    the share of its wall time in which any kernel ran."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    fn()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        wall = time.perf_counter() - t
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    spans = sorted((e.time_range.start, e.time_range.end) for e in kernels)
    busy, end = 0.0, None
    for a, b in spans:  # the union of the kernels' intervals, in us
        if end is None or a > end:
            busy += b - a
            end = b
        elif b > end:
            busy += b - end
            end = b
    by_name: dict[str, float] = {}
    for e in kernels:
        by_name[e.name[:60]] = by_name.get(e.name[:60], 0.0) + e.time_range.elapsed_us()
    return {"wall_ms": round(wall * 1e3, 2), "gpu_busy_ms": round(busy / 1e3, 2),
            "kernels_ms": {k: round(v / 1e3, 2) for k, v in sorted(by_name.items(), key=lambda kv: -kv[1])[:top]}}


def parallel_encode_rate(decoded: list[list], encoders: int) -> float:
    """Images per second encoding the same batches with ``encoders`` nvImageCodec encoders side
    by side, each in its thread with its stream. lens encodes with one: on an H100 two did
    2224 images/s here against one's 1598 (2048 x 1367), but `lens run` with a pool of two was
    not faster beyond noise (H100 and H200, 4-8 threads), and its GPU work now goes one batch
    at a time (`runner.SERIAL_DEVICE_WORK`)."""
    from concurrent.futures import ThreadPoolExecutor

    from nvidia import nvimgcodec as nv

    params = nv.EncodeParams(quality_type=nv.QualityType.QUALITY, quality_value=95.0, chroma_subsampling=nv.ChromaSubsampling.CSS_444)
    slots = [(nv.Encoder(device_id=0), torch.cuda.Stream()) for _ in range(encoders)]

    def work(k: int) -> None:
        encoder, stream = slots[k]
        for images in decoded[k::encoders]:
            streams = encoder.encode([nv.as_image(t, cuda_stream=stream.cuda_stream) for t in images], "jpeg", params=params, cuda_stream=stream.cuda_stream)
            [bytes(memoryview(c)) for c in streams]

    with ThreadPoolExecutor(encoders) as pool:
        return rate(sum(len(d) for d in decoded), lambda: list(pool.map(work, range(encoders))))


def batches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def stages(files: list[Path], backend: TorchBackend, batch: int = 16) -> dict:
    codec = shared_codec()
    datas = [p.read_bytes() for p in files]
    groups = batches(datas, batch)
    decoded = [codec.decode(g) for g in groups]
    torch.cuda.synchronize()
    n = len(datas)
    out: dict = {}
    out["floor_decode"] = rate(n, lambda: [codec.decode(g) for g in groups])
    out["floor_encode"] = rate(n, lambda: [codec.encode(d, 95) for d, _ in decoded])
    for k in (2, 3, 4):
        try:
            out[f"floor_encode_{k}_encoders"] = parallel_encode_rate([d for d, _ in decoded], k)
        except Exception as exc:  # a diagnosis: its failure must not lose the rest
            out[f"floor_encode_{k}_encoders"] = f"failed: {type(exc).__name__}: {exc}"

    def both():
        for g in groups:
            d, ready = codec.decode(g)
            codec.encode(d, 95, after=ready)

    out["floor_both"] = rate(n, both)
    out["floor_both_threaded"] = round(floor_nvimgcodec(files, batch, GPU_CODEC_THREADS), 1)
    out["model"] = rate(n, lambda: [backend.run_device(d, -1, ready) for d, ready in decoded])

    def gpu_loop():
        for g in groups:
            d, ready = codec.decode(g)
            _, corrected = backend.run_device(d, -1, ready)
            codec.encode(list(corrected.unbind(0)), 95)

    out["gpu_loop"] = rate(n, gpu_loop)
    try:
        out["gpu_loop_profile"] = profile(gpu_loop)
    except Exception as exc:  # the profiler is a diagnosis: its failure must not lose the rest
        out["gpu_loop_profile"] = f"failed: {type(exc).__name__}: {exc}"
    one = groups[0]
    out["gil_decode"] = gil_share(lambda: codec.decode(one))
    out["gil_encode"] = gil_share(lambda: codec.encode(decoded[0][0], 95))
    out["gil_model"] = gil_share(lambda: backend.run_device(decoded[0][0], -1, decoded[0][1]))
    out["backend_state"] = backend.describe()
    return out


def host_costs(files: list[Path], tmp: Path) -> dict:
    """Per-image CPU time of the host work of the GPU path, one thread: the header read
    (`_decode` with the JPEG kept), the check of its data (on threads of its own in a run),
    the metadata splice and atomic write."""
    from concurrent.futures import ThreadPoolExecutor

    from lens.runtime.io import splice_jpeg_metadata, write_atomic
    from lens.runtime.pipeline import _decode, plan

    jobs, _ = plan(files[0].parent, tmp)
    with ThreadPoolExecutor(1) as checks:
        c = time.process_time()
        for j in jobs:
            _decode(j, checks)
        for j in jobs:
            j.image.data_check.result()
        checked = time.process_time() - c  # the process's time: both threads
    data = files[0].read_bytes() * 2  # about an output's size
    c = time.process_time()
    for j in jobs:
        write_atomic(j.output, splice_jpeg_metadata(data, j.image.exif, j.image.icc_profile, j.image.segments))
    write = time.process_time() - c
    check_ms = sum(j.image.data_check.result()[1] for j in jobs) / len(jobs)
    return {"header_cpu_ms": round(checked * 1e3 / len(jobs) - check_ms, 3), "data_check_ms": round(check_ms, 3),
            "write_cpu_ms": round(write * 1e3 / len(jobs), 3)}


def lens_rows(src: Path, tmp: Path, backend: TorchBackend, settings: list[tuple[int, int, float, bool | None]]) -> list[dict]:
    """`lens run` per (threads, batch, GIL switch interval, serial GPU work); the threads as
    given, above lens's cap for the GPU codec path (`pipeline.GPU_CODEC_THREADS`) too; serial
    None: `runner.SERIAL_DEVICE_WORK` as it is (the one `run` API that older versions share)."""
    from lens.runtime import runner

    rows = []
    default_switch, default_cap = sys.getswitchinterval(), getattr(pipeline, "GPU_CODEC_THREADS", None)
    default_serial = getattr(runner, "SERIAL_DEVICE_WORK", None)
    for workers, batch, switch, serial in settings:
        options = RunOptions(batch=batch, workers=workers, codec="gpu", refine="off")
        sys.setswitchinterval(switch)
        pipeline.GPU_CODEC_THREADS = workers
        if serial is not None:
            runner.SERIAL_DEVICE_WORK = serial
        try:
            run(src, tmp / f"warm{workers}_{batch}", backend, options, {})
            out = tmp / f"lens{workers}_{batch}_{switch}"
            c0, t0 = time.process_time(), time.perf_counter()
            summary = run(src, out, backend, options, {})
            cores = (time.process_time() - c0) / (time.perf_counter() - t0)
        finally:
            sys.setswitchinterval(default_switch)
            pipeline.GPU_CODEC_THREADS = default_cap
            runner.SERIAL_DEVICE_WORK = default_serial
        rows.append({"workers": workers, "batch": batch, "switch_ms": switch * 1e3, "serial": serial, "images_per_s": summary["throughput"]["images_per_s"],
                     "cores_busy": round(cores, 2), "stages_ms": stage_means(out)})
        # ~0.7 GB of outputs a row: kept, they would pile up in the page cache across the rows
        shutil.rmtree(out)
        shutil.rmtree(tmp / f"warm{workers}_{batch}")
    return rows


def main(n_small: int = 192, n_large: int = 48, lens_only: bool = False, no_stages: bool = False) -> None:
    """``lens_only``: the ``lens`` rows alone, with the `run` API that older versions share
    (to compare two versions of lens, each run in a process of its own, same files);
    ``no_stages``: this version's ``lens`` rows alone."""
    assert torch.cuda.is_available(), "gpu_stages needs a CUDA GPU"
    backend = TorchBackend(CHECKPOINT, "cuda")
    print(json.dumps({"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "lens": str(Path(lens.__file__).parent)}), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for (w, h), n in (((2048, 1367), n_small), ((4000, 3000), n_large)):
            src = Path(tmp) / f"in{w}"
            files = make_inputs(src, n, (w, h), 14)
            if not (lens_only or no_stages):
                print(json.dumps({"size": f"{w}x{h}", "images": n, **stages(files, backend), **host_costs(files, Path(tmp) / f"host{w}")}), flush=True)
            if lens_only:
                settings = [(4, 16, 0.005, None), (8, 16, 0.005, None)]
            else:  # the GPU work one batch at a time or not, by GIL switch interval; each order twice
                settings = [(4, 16, switch, serial) for _ in range(2) for switch in (0.005, 0.0005) for serial in (True, False)]
            for row in lens_rows(src, Path(tmp) / f"runs{w}", backend, settings):
                print(json.dumps({"size": f"{w}x{h}", **row}), flush=True)


def loop(seconds: float, n: int = 192) -> None:
    backend = TorchBackend(CHECKPOINT, "cuda")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        make_inputs(src, n, (2048, 1367), 14)
        options = RunOptions(batch=16, workers=14, codec="gpu", refine="off")
        run(src, Path(tmp) / "warm", backend, options, {})
        end, i = time.perf_counter() + seconds, 0
        while time.perf_counter() < end:
            i += 1
            summary = run(src, Path(tmp) / "out", backend, options, {})
        print(json.dumps({"loop_runs": i, "last_images_per_s": summary["throughput"]["images_per_s"]}), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--loop"]:
        loop(float(sys.argv[2]))
    else:
        args = [a for a in sys.argv[1:] if not a.startswith("--")]
        main(*(int(a) for a in args[:2]), lens_only="--lens-only" in sys.argv, no_stages="--no-stages" in sys.argv)
