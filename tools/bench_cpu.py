"""CPU throughput of `lens run` against a plain OpenCV undistort pipeline, same files, same
thread count, same process (issue bar: lens >= 0.5x OpenCV).

    python tools/bench_cpu.py [N] [THREADS] [ROUNDS] [WxH] [photos|scenes]

WxH: the JPEGs' size (default 2048x1367, the issue's; 4000x3000 is a 12 MP camera's).
Content (what the line fit's cost depends on): ``photos`` (default), the bundled sample photos
(a portrait, a coffee cup on wood grain, a rocket: much texture, few long lines); ``scenes``,
the validation set of `lens eval` distorted by workload lenses (procedural rooms and facades,
every 8th image the held-out portrait), closer to real-estate photos (needs the training extra).

Baseline per image: cv2.imread, getOptimalNewCameraMatrix + initUndistortRectifyMap (known
k1 = -0.2, k2 = 0.4; maps rebuilt per image, as each photo has its own coefficients) + remap,
cv2.imwrite JPEG 95 4:4:4. lens: the full `lens run` pipeline (decode, ONNX Runtime inference of
the default model, safety + fallback, OpenCV sampling, encode, atomic write, metadata), once
with the default line fit (`--refine lines`: the lens refitted to each photo's straight lines)
and once without (`--refine off`). All run over THREADS worker threads. Runs alternate ROUNDS times (3),
every other round in the reverse order;
reported: the best of each, the median of the per-round ratios, and the CPU time each pipeline
spends per image (user + system, this process and its children: the core-time a photo costs).
"""
from __future__ import annotations

import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from lens.runtime.backends import DEFAULT_BUILD, OnnxRuntimeBackend
from lens.runtime.memory import keep_freed_memory
from lens.runtime.pipeline import RunOptions, run

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def make_inputs(folder: Path, n: int, size: tuple[int, int] = (2048, 1367)) -> None:
    folder.mkdir(parents=True)
    srcs = [cv2.resize(cv2.imread(str(p)), size, interpolation=cv2.INTER_AREA) for p in sorted(SAMPLES.glob("*.jpg"))]
    for i in range(n):
        img = np.roll(srcs[i % len(srcs)], i * 7, axis=1)  # distinct pixels per file
        cv2.imwrite(str(folder / f"img{i:03d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 92])


def make_scene_inputs(folder: Path, n: int, size: tuple[int, int] = (2048, 1367)) -> None:
    from lens.training.batches import synthetic_samples

    folder.mkdir(parents=True)
    for i, sample in enumerate(synthetic_samples("workload", n, seed=0, width=size[0], height=size[1])):
        cv2.imwrite(str(folder / f"img{i:03d}.jpg"), cv2.cvtColor(sample.original, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])


def opencv_pipeline(src: Path, out: Path, threads: int) -> float:
    out.mkdir(parents=True, exist_ok=True)

    def one(path: Path) -> None:
        img = cv2.imread(str(path))
        h, w = img.shape[:2]
        K = np.array([[w, 0, (w - 1) / 2], [0, w, (h - 1) / 2], [0, 0, 1.0]])
        D = np.array([-0.2, 0.4, 0, 0, 0.0])
        new_k, _ = cv2.getOptimalNewCameraMatrix(K, D, (w, h), 0)
        m1, m2 = cv2.initUndistortRectifyMap(K, D, None, new_k, (w, h), cv2.CV_16SC2)
        fixed = cv2.remap(img, m1, m2, cv2.INTER_LINEAR)
        cv2.imwrite(str(out / path.name), fixed, [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])

    files = sorted(src.glob("*.jpg"))
    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, files))
    return len(files) / (time.perf_counter() - t)


def lens_pipeline(src: Path, out: Path, threads: int, backend, refine: str) -> float:
    """Images per second over the whole `run` call, as the OpenCV pipeline is timed: the run's
    own setup (settings, listing, starting the line-fit processes) included."""
    t = time.perf_counter()
    summary = run(src, out, backend, RunOptions(batch=1, workers=threads, refine=refine), {})
    return summary["ok"] / (time.perf_counter() - t)


def cpu_seconds() -> float:
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))


def main(n: int = 24, threads: int = 2, rounds: int = 3, size: tuple[int, int] = (2048, 1367), content: str = "photos") -> None:
    cv2.setNumThreads(1)  # the worker threads are the parallelism, for both pipelines
    keep_freed_memory()  # as `lens run` sets it on its first run: every round, both pipelines, the same allocator
    backend = OnnxRuntimeBackend(DEFAULT_BUILD, "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        (make_scene_inputs if content == "scenes" else make_inputs)(src, n, size)
        rates: dict[str, list[float]] = {"OpenCV undistort pipeline": [], "lens run --refine lines": [], "lens run --refine off": []}
        cpu_ms: dict[str, list[float]] = {k: [] for k in rates}

        def timed(name: str, pipeline) -> None:
            before = cpu_seconds()
            rates[name].append(pipeline())
            cpu_ms[name].append((cpu_seconds() - before) / n * 1e3)

        pipelines = {
            "OpenCV undistort pipeline": lambda out: opencv_pipeline(src, out, threads),
            **{f"lens run --refine {refine}": (lambda out, refine=refine: lens_pipeline(src, out, threads, backend, refine)) for refine in ("lines", "off")},
        }
        for rep in range(rounds):
            # every other round in the reverse order, so that a pipeline's place in the round
            # favours none (here, back-to-back runs of one pipeline were up to ~20% apart in a
            # slow-fast pattern of the machine's own); outputs deleted as the rounds go
            for k, (name, pipeline) in enumerate(pipelines.items() if rep % 2 == 0 else reversed(pipelines.items())):
                out = Path(tmp) / f"out{rep}-{k}"
                timed(name, lambda: pipeline(out))
                shutil.rmtree(out)
        best = {k: max(v) for k, v in rates.items()}
        print(f"{n} images {size[0]}x{size[1]} ({content}), {threads} threads")
        for name, runs in rates.items():
            print(f"{name:27s} {best[name]:6.2f} images/s  (runs: {', '.join(f'{r:.2f}' for r in runs)}); "
                  f"CPU {float(np.median(cpu_ms[name])):.0f} ms per image (median of rounds)")
        for refine in ("lines", "off"):
            # each round runs the pipelines back to back, so its ratio shares the machine's
            # state: on a shared machine the per-round median is the steadier figure
            per_round = [lens / cv for lens, cv in zip(rates[f"lens run --refine {refine}"], rates["OpenCV undistort pipeline"])]
            print(f"ratio lens (--refine {refine}) / OpenCV: {best[f'lens run --refine {refine}'] / best['OpenCV undistort pipeline']:.2f} best of each, "
                  f"{float(np.median(per_round)):.2f} median of rounds ({', '.join(f'{r:.2f}' for r in per_round)})  (bar: >= 0.5)")


if __name__ == "__main__":
    size = tuple(int(v) for v in sys.argv[4].split("x")) if len(sys.argv) > 4 else (2048, 1367)
    content = sys.argv[5] if len(sys.argv) > 5 else "photos"
    if content not in ("photos", "scenes"):
        sys.exit(f"content must be photos or scenes, not {content!r}")
    main(*(int(a) for a in sys.argv[1:4]), size=size, content=content)
