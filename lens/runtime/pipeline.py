"""`lens run`: decode, infer, choose a mode, warp, encode, write — for thousands of photos.

- Worker threads decode, sample (OpenCV releases the GIL) and encode; images are grouped by
  size into batches for the GPU backends. On the CPU each image is inferred on its own, so an
  image's output never depends on ``--batch`` or ``--workers``: byte-identical outputs.
- Every output is written to a temporary name and renamed; the output folder's bookkeeping
  (one run at a time, ``--resume``'s settings and records, stale temporaries of a killed run)
  is `lens.runtime.run_folder`'s.
- Per-image records go to ``OUT/lens-run/images.jsonl`` (appended as images finish, rewritten
  sorted at the end) and a summary to ``OUT/lens-run/summary.json`` (`lens.runtime.metadata`).
- A file that cannot be read is recorded with its reason and the run goes on; the exit code
  says whether anything failed.
"""
from __future__ import annotations

import json
import platform
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from lens.conventions import MAX_CORNER_RADIUS
from lens.runtime.backends import Backend
from lens.runtime.cpu_budget import opencv_threads_per_worker, usable_cores
from lens.runtime.held_photos import HeldPhotos, held_photos_budget
from lens.runtime.io import ImageReadError, check_jpeg_data, claim_output_names, image_id, list_images, output_name, read_image, write_atomic
from lens.runtime.memory import keep_freed_memory
from lens.runtime.metadata import IMAGES_FILE, RUN_DIR, SUMMARY_FILE
from lens.runtime.policy import MODES
from lens.runtime.run_folder import OutputDiskFull, RecordsUnwritable, RunRefused, clean_stale_temporaries, exclusive, hold_to_settings, read_records, source_stat
from lens.runtime.runner import Job, RunOptions, Runner, failed_because, failure_record, fault_record, fault_text

__all__ = ["Job", "RunOptions", "Runner", "batch_plan", "choose_codec", "line_fit_plan", "output_settings", "plan", "run"]


def plan(src: Path, out: Path, recursive: bool = False) -> tuple[list[Job], list[dict]]:
    """One job per input (sorted by path). An image's id is its path below ``src`` without the
    suffix ("IMG_1", or "listing42/IMG_1" with ``recursive``; "<id>" for a workload input
    "<id>_original.jpg") and its output the same path below ``out`` (`claim_output_names`).
    Refused: inputs whose output name another input has (two files with one stem would
    overwrite each other), and inputs that their own output would replace (OUT is the input's
    folder). A refused input's record has its path below ``src`` as its id, suffix included,
    so that it is counted beside the image that has the name."""
    sources = list_images(src, recursive, out.resolve()) if src.is_dir() else [src]
    named, clashes = claim_output_names(sources, src if src.is_dir() else None)

    def refused_id(s: Path) -> str:
        return (s.relative_to(src) if src.is_dir() else Path(s.name)).as_posix()

    refused = [{"id": refused_id(s), "source": str(s), "status": "failed", "error": _taken(name, holder)}
               for s, name, holder in clashes]
    jobs = []
    for name, s in named.items():
        if (out / name).resolve() == s.resolve():
            refused.append({"id": refused_id(s), "source": str(s), "status": "failed",
                            "error": f"the output {out / name} would replace this input: choose an output folder other than the input's"})
            continue
        jobs.append(Job(image_id(name), s, out / name, source_stat=source_stat(s)))
    ids = {j.image_id for j in jobs}
    for r in refused:  # "a.jpeg" refused, while "a.jpeg.jpg" is corrected as "a.jpeg"
        if r["id"] in ids:
            r["id"] += " (refused input)"
    return jobs, refused


def _taken(name: str, holder: Path) -> str:
    held = output_name(holder)
    if Path(name).name == held:
        return f"output name {name} already taken by {holder.name}"
    return f"image {Path(name).stem} already taken by {holder.name} (corrected as {held}; this one would be {Path(name).name})"


def _decode(job: Job, checks: ThreadPoolExecutor | None = None) -> Job:
    """Reads ``job``'s image; with ``checks`` (the GPU codec path), a JPEG for the GPU decoder
    is not decoded here, and its data is checked for damage on one of those threads."""
    t = time.perf_counter()
    try:
        job.image = read_image(job.source, keep_jpeg=checks is not None)
        job.error = frame_problem(job.image.height, job.image.width)
    except ImageReadError as exc:  # every decoder fault is one (`read_image`)
        job.error = exc.reason
    if job.error:
        job.image = None
    elif job.image.encoded is not None:
        job.image.data_check = checks.submit(_timed_check, job.image.encoded)
    job.timings["decode_ms"] = (time.perf_counter() - t) * 1e3
    return job


def _timed_check(data: bytes) -> tuple[str | None, float]:
    """`check_jpeg_data` and its time in ms."""
    t = time.perf_counter()
    return check_jpeg_data(data), (time.perf_counter() - t) * 1e3


def jpeg_check_threads(cores: int | None = None) -> int:
    """Threads for the GPU codec path's host checks of JPEG data (`check_jpeg_data`): 6, or
    every core but 2 where that is fewer (the path's own `GPU_CODEC_THREADS` mostly take turns
    on the GIL, ~1.1 cores' worth at 636 photos/s of 2048 x 1367 on an H200). There the checks
    take ~3.6 cores (~5 at 4000 x 3000), and more threads than that only contended: against
    runs without checks, same process, 6 threads ran at 0.96x and 0.98x (2048 x 1367,
    4000 x 3000), 12 at 0.95x and 0.95x, 14 at 0.90x and 0.92x. A host with fewer cores to
    spare holds the run to what they check, which its summary says (``jpeg_checks``)."""
    return max(1, min(6, (cores or usable_cores()) - 2))


# OpenCV's remap takes sides below SHRT_MAX: a 33000 px panorama stopped the whole run with
# its assertion (JPEG itself ends at 65535)
MAX_SIDE = 32766


def frame_problem(height: int, width: int) -> str | None:
    """Why a photo of this size cannot be corrected: a side beyond `MAX_SIDE`, or (a lens model
    in the convention's units) its corners beyond `MAX_CORNER_RADIUS`; or None."""
    if max(height, width) > MAX_SIDE:
        return f"too large to warp: {width}x{height} has a side over {MAX_SIDE} px, the most OpenCV's remap takes"
    radius = np.hypot((width - 1) / 2, (height - 1) / 2) / width
    if radius <= MAX_CORNER_RADIUS:
        return None
    return (f"too tall to correct: {width}x{height} (1:{height / width:.1f}) puts its corners {radius:.2f} focal lengths from the centre "
            f"under the lens convention (focal length = width), beyond the {MAX_CORNER_RADIUS} any lens of the model reaches "
            "(taller than about 1:2.4: a crop or a panorama, not a camera's frame)")


def line_fit_plan(backend: Backend, options: RunOptions) -> tuple[bool, str]:
    """Whether this run refits each lens to the photo's straight lines, and why (one line).
    ``auto``: yes where the CPU samples anyway; GPU backends keep their own warp at GPU speed
    (the fit costs ~0.05 s of a CPU core per 2048-px photo) unless ``lines`` asks for it."""
    if options.refine not in ("auto", "lines", "off"):
        raise ValueError(f"unknown --refine {options.refine!r}: choose auto, lines or off")
    if options.refine == "off":
        return False, "off (asked for)"
    if options.mode_override >= 0:
        return False, "off (the mode is forced)"
    if backend.samples_on_device and options.refine == "auto":
        return False, (f"off ({backend.name} on {backend.device} warps in the graph at GPU speed; "
                       "--refine lines refits on the CPU at ~0.05 s of a core per photo)")
    if backend.samples_on_device:
        return True, "lines (refitted on the CPU; where a fit is used, OpenCV re-warps the photo)"
    return True, "lines (each lens refitted to the photo's straight lines where they allow)"


# `--batch`'s default on a GPU backend. The torch backend on an H200 with the GPU codec
# (tools/bench_gpu_batch.py, 240 photos of 2048 x 1367, 3 rounds in one process): 153-169
# images/s at batch 1, 2.7x that at 4, 3.7x at 16, 2.7x at 32.
GPU_BATCH = 16


def batch_plan(backend: Backend, wanted: int = 0) -> tuple[int, str]:
    """Images per inference for this backend, and why (one line). ``wanted`` 0: `GPU_BATCH`
    on a GPU backend, 1 on the CPU (which infers one image at a time whatever ``--batch``
    says); a TensorRT engine takes at most its profile's batch."""
    if not (backend.samples_on_device or backend.device_resident):
        return 1, "1 (the CPU infers one image at a time)"
    batch, why = (wanted, "asked for") if wanted > 0 else (GPU_BATCH, "the GPU default; --batch to change")
    if backend.max_batch is not None and batch > backend.max_batch:
        batch, why = backend.max_batch, f"{why}, at most {backend.max_batch}: the engine's shape profile takes no more"
    return batch, f"{batch} per inference ({why})"


def choose_codec(backend: Backend, wanted: str, line_fit: bool = False):
    """(GpuJpegCodec or None, one line saying which codec and why). ``auto`` takes the GPU
    codec when the backend keeps images on the GPU and nvImageCodec starts, and no line fit
    needs the pixels on the host."""
    from lens.runtime.backends import BackendUnavailable
    from lens.runtime.gpu_jpeg import GpuJpegUnavailable, shared_codec

    if wanted not in ("auto", "cpu", "gpu"):
        raise BackendUnavailable(f"unknown codec {wanted!r}: choose auto, cpu or gpu")
    if wanted == "cpu":
        return None, "cpu (asked for)"
    if line_fit and backend.device_resident:
        if wanted == "gpu":
            raise BackendUnavailable("--codec gpu keeps the pixels on the GPU, the line fit (--refine lines) needs them on the host: choose one")
        return None, "cpu (the line fit needs the pixels on the host)"
    if not backend.device_resident:
        if wanted == "gpu":
            raise BackendUnavailable(f"--codec gpu needs the torch backend on CUDA, not {backend.name} on {backend.device}")
        return None, f"cpu ({backend.name} on {backend.device} takes host images)"
    try:
        return shared_codec(), f"gpu: nvImageCodec decodes and encodes RGB JPEGs on the GPU ({GPU_CODEC_THREADS} host threads at most)"
    except GpuJpegUnavailable as exc:
        if wanted == "gpu":
            raise BackendUnavailable(str(exc)) from None
        return None, f"cpu ({exc})"


# Host threads of the GPU codec path (`choose_codec`): there the GPU decodes, warps and encodes,
# and the threads read headers, hand batches over and write files, mostly holding the GIL. More
# of them only queued on it and on the codec's locks: on an H200 (tools/gpu_stages.py, batch 16,
# 2048 x 1367 and 4000 x 3000) 3-4 threads beat 14 in 5 of 6 same-process comparisons (669
# against 528 images/s at 2048 x 1367 in one). Files the GPU decoder does not take (PNG,
# greyscale) are decoded by these threads too.
GPU_CODEC_THREADS = 4

# Decoded images waiting for same-size company hold at most this many batches' worth: past it
# the oldest group goes as a partial batch. Unbounded, a folder of many sizes was held decoded
# almost whole, every further size adding its photo (160 photos of distinct sizes near
# 3000 x 2000, --batch 16, measured on the CPU before --batch stopped applying there: peak
# 6.9 GB, 4.4 GB with this bound, the rest being the decodes in flight).
HELD_BATCHES = 2


def _batches(decoded: Iterator[Job], size: int, failed: Callable[[Job], None]) -> Iterator[list[Job]]:
    """Same-size groups of up to ``size`` in input order; partial groups where more than
    `HELD_BATCHES` batches' worth wait, and at the end. Which images go together depends only
    on the input order and sizes, never on timing."""
    pending: OrderedDict[tuple, list[Job]] = OrderedDict()
    held = 0
    for job in decoded:
        if job.error:
            failed(job)
            continue
        key = (job.image.encoded is not None, job.image.height, job.image.width)
        pending.setdefault(key, []).append(job)
        held += 1
        if len(pending[key]) >= size:
            group = pending.pop(key)
        elif held > HELD_BATCHES * size:
            group = pending.popitem(last=False)[1]
        else:
            continue
        held -= len(group)
        yield group
    yield from pending.values()


class RefusedSizes:
    """Runs the batches whose size ``backend`` refuses (`Backend.refuses`: a TensorRT engine's
    shape profile) on its fallback (`Backend.fallback`), made when first needed; each such
    record says so (``backend``). Where there is none, those photos fail with both reasons."""

    def __init__(self, backend: Backend, make_runner: Callable[[Backend], Runner]):
        self.backend, self.make_runner = backend, make_runner
        self.runner: Runner | None = None
        self.chosen: str | None = None  # the fallback, and why it (`select_backend`'s line)
        self.unavailable: str | None = None

    def process_for(self, jobs: list[Job], runner: Runner) -> Callable[[list[Job]], list[dict]]:
        why = self.backend.refuses(jobs[0].image.height, jobs[0].image.width)
        if why is None:
            return runner.process
        if self.runner is None and self.unavailable is None:
            from lens.runtime.backends import BackendUnavailable

            try:
                choice = self.backend.fallback()
                self.runner, self.chosen = self.make_runner(choice.backend), choice.reason
            except BackendUnavailable as exc:
                self.unavailable = str(exc)
            except Exception as exc:  # a backend that broke while starting: these photos fail, the run goes on
                self.unavailable = fault_text(exc)
        if self.runner is None:
            return lambda batch: [failed_because(j, f"{why}, and no other backend can take it ({self.unavailable})") for j in batch]
        other = self.runner

        def process(batch: list[Job]) -> list[dict]:
            records = other.process(batch)
            for rec in records:
                if rec["status"] == "ok":
                    rec["backend"] = f"{other.backend.name} on {other.backend.device}: {why}"
            return records

        return process


def output_settings(backend: Backend, options: RunOptions, info: dict, line_fit: bool, gpu_codec: bool) -> dict:
    """What decides an output's bytes: the model, the backend, the options that change pixels
    or encoding, and lens's version (``--workers`` does not; nor does ``--batch`` on the CPU,
    where each image is inferred alone)."""
    from lens import __version__

    model = info.get("model", {})
    settings = {"lens": __version__, "model": {k: model.get(k) for k in ("checkpoint_sha256", "onnx")},
                "backend": backend.name, "device": backend.device, "quality": options.quality,
                "mode": "auto" if options.mode_override < 0 else MODES[options.mode_override],
                "line_fit": line_fit, "codec": "gpu" if gpu_codec else "cpu"}
    if backend.samples_on_device:  # GPU kernels may differ with the batch size
        settings["batch"] = batch_plan(backend, options.batch)[0]
    return settings


def run(src: Path, out: Path, backend: Backend, options: RunOptions, info: dict,
        on_image: Callable[[dict], None] | None = None, has_residual: bool = True, codec_choice: tuple | None = None,
        on_skipped: Callable[[int], None] | None = None) -> dict:
    """Correct every image of ``src`` into ``out``; returns the run summary. ``codec_choice``:
    a `choose_codec` result already made (default: made here from ``options.codec``).
    ``on_image``: called with each new record; ``on_skipped``: once, with the number of images
    ``--resume`` skips. Raises `RunRefused` before writing anything if another run holds
    ``out`` or ``--resume`` finds other settings there."""
    keep_freed_memory()  # each photo's buffers are reused instead of zero-filled again by the kernel
    run_dir = out / RUN_DIR
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunRefused(f"cannot create the output folder {run_dir}: {exc.strerror or exc}") from None
    with exclusive(run_dir) as unlocked, opencv_threads_per_worker(options.workers):
        summary = _run_locked(src, out, run_dir, backend, options, info, on_image, has_residual, codec_choice, on_skipped, unlocked)
    return summary


def _run_locked(src: Path, out: Path, run_dir: Path, backend: Backend, options: RunOptions, info: dict,
                on_image: Callable[[dict], None] | None, has_residual: bool, codec_choice: tuple | None,
                on_skipped: Callable[[int], None] | None, unlocked: str | None = None) -> dict:
    line_fit, line_fit_reason = line_fit_plan(backend, options)
    codec, codec_reason = codec_choice or choose_codec(backend, options.codec, line_fit)
    hold_to_settings(run_dir, output_settings(backend, options, info, line_fit, codec is not None), options.resume)
    clean_stale_temporaries(out, options.recursive)
    jobs, refused = plan(src, out, options.recursive)
    previous = read_records(run_dir) if options.resume else {}
    # an input replaced since (another size or time) is corrected again, and so is an output
    # gone or not the size recorded
    done_before = [j for j in jobs if previous.get(j.image_id, {}).get("status") == "ok"
                   and previous[j.image_id].get("source_stat", j.source_stat) == j.source_stat]
    skip_ids = {j.image_id for j in done_before if _output_intact(j.output, previous[j.image_id])}
    outputs_redone = len(done_before) - len(skip_ids)
    if on_skipped and skip_ids:
        on_skipped(len(skip_ids))
    todo = [j for j in jobs if j.image_id not in skip_ids]
    records: dict[str, dict] = {i: previous[i] for i in skip_ids}
    lock = threading.Lock()
    part = open(run_dir / (IMAGES_FILE + ".part"), "a" if options.resume else "w")

    def record(rec: dict) -> None:
        with lock:
            records[rec["id"]] = rec
            try:
                part.write(json.dumps(rec, sort_keys=True) + "\n")
                part.flush()
            except OSError as exc:
                raise RecordsUnwritable(f"cannot write the run's records in {run_dir}: {exc.strerror or exc}") from None
        if on_image:
            on_image(rec)

    held = HeldPhotos(held_photos_budget())

    def failed(job: Job) -> None:
        held.done()
        record(failure_record(job))

    for r in refused:
        record(r)
    line_fits = None
    if line_fit:
        from lens.runtime.plumb_line import LineFitPool

        line_fits = LineFitPool.for_workers(options.workers, images=len(todo))
    runner = Runner(backend, options, has_residual=has_residual, codec=codec, line_fits=line_fits)
    # the fallback decodes on the host: only the torch backend takes the GPU codec's tensors
    refused_sizes = RefusedSizes(backend, lambda other: Runner(other, options, has_residual=has_residual, line_fits=line_fits))
    t0 = time.perf_counter()
    workers = max(1, options.workers)
    if codec is not None:
        workers = min(workers, GPU_CODEC_THREADS)
    # The CPU graph infers one image at a time (`Runner.process`): there a larger --batch would
    # only hold more decoded photos (a batch of 16: 16x the decodes in flight) for nothing (`batch_plan`)
    batch = batch_plan(backend, options.batch)[0]
    check_threads = jpeg_check_threads() if codec is not None else 0
    checks = ThreadPoolExecutor(check_threads, thread_name_prefix="jpeg-check") if check_threads else None
    try:
        with ThreadPoolExecutor(workers) as pool:
            window = max(2, 2 * workers * batch)
            decode_futures: list[Future] = []
            it = iter(todo)

            def oldest() -> Job:
                job = decode_futures.pop(0).result()
                if job.image is not None:
                    held.saw(job.image.pixels.nbytes if job.image.pixels is not None else len(job.image.encoded))
                return job

            def decoded() -> Iterator[Job]:
                for job in it:
                    while decode_futures and held.full(more=1):  # none ahead that would overfill the photos' share of memory
                        yield oldest()
                    decode_futures.append(pool.submit(_decode, job, checks))
                    held.add()
                    if len(decode_futures) >= window:  # and a bounded window of decodes in flight
                        yield oldest()
                while decode_futures:
                    yield oldest()

            in_flight: list[tuple[Future, list[Job]]] = []

            def drain(limit: int) -> None:
                while len(in_flight) > limit:
                    fut, batch_jobs = in_flight.pop(0)
                    try:
                        records_done = fut.result()
                    except Exception as exc:  # faults of one image are caught inside; this is an image alone
                        records_done = [fault_record(j, exc) for j in batch_jobs]
                    held.done(len(batch_jobs))
                    for rec in records_done:
                        record(rec)
                    full = next((j for j in batch_jobs if j.disk_full), None)
                    if full is not None:
                        raise OutputDiskFull(full.error)

            try:
                for batch_jobs in _batches(decoded(), batch, failed):
                    in_flight.append((pool.submit(refused_sizes.process_for(batch_jobs, runner), batch_jobs), batch_jobs))
                    drain(workers)
                    while in_flight and held.full(more=1):  # room for the next photo first
                        drain(len(in_flight) - 1)
                drain(0)
            except (KeyboardInterrupt, RecordsUnwritable) as stop:
                # images not started are dropped (--resume redoes whatever has no record)
                for fut in decode_futures:
                    fut.cancel()
                in_flight[:] = [(f, b) for f, b in in_flight if not f.cancel()]  # cancel(): True if it had not started
                if isinstance(stop, KeyboardInterrupt):
                    # Ctrl-C: those being written finish and are recorded, so that --resume
                    # skips them; on a full disk their records would not fit either
                    drain(0)
                raise
    finally:
        try:
            part.close()
        except OSError:  # what it could not flush, `record` has already reported
            pass
        if line_fits is not None:
            line_fits.close()
        if checks is not None:
            checks.shutdown(cancel_futures=True)
    wall = time.perf_counter() - t0
    ordered = [records[k] for k in sorted(records)]
    _write_records(run_dir / IMAGES_FILE, "".join(json.dumps(r, sort_keys=True) + "\n" for r in ordered).encode())
    (run_dir / (IMAGES_FILE + ".part")).unlink(missing_ok=True)
    done_now = [r for r in ordered if r["id"] not in skip_ids]
    ok_now = [r for r in done_now if r["status"] == "ok"]
    summary = {
        "images": len(ordered),
        "ok": sum(r["status"] == "ok" for r in ordered),
        "failed": [{"id": r["id"], "source": r.get("source"), "reason": r["error"]} for r in ordered if r["status"] != "ok"],
        "skipped_resume": len(skip_ids),
        # done by an earlier run, but the output is gone or not the size recorded (cut short by a power cut, edited)
        "outputs_redone": outputs_redone,
        "modes": {m: sum(r.get("mode") == m for r in ordered) for m in MODES},
        "hard_unsafe": [r["id"] for r in ordered if r.get("hard_unsafe")],
        # images of this run whose batch faulted, each then run alone (`Runner.process`)
        "batch_retried": sum(bool(r.get("batch_retry")) for r in done_now),
        # images decoded in spite of a decoder's warning (stray bytes before the end marker: a
        # camera's padding, or damage): worth a look
        "decode_warnings": sorted(r["id"] for r in ordered if r["status"] == "ok" and r.get("decode_warnings")),
        # what outputs could not keep of their inputs (alpha, other frames, depth, a profile)
        "notes": dict(sorted(Counter(n for r in ordered if r["status"] == "ok" for n in r.get("notes", [])).items())),
        "throughput": {"images": len(ok_now), "wall_s": round(wall, 3), "images_per_s": round(len(ok_now) / wall, 3) if wall > 0 else None},
        "codec": codec_reason,
        # the GPU codec path's host checks of JPEG data: how long writes waited for them in all
        "jpeg_checks": {"threads": check_threads, "waited_s": round(sum(r.get("timings_ms", {}).get("check_wait_ms", 0) for r in done_now) / 1e3, 3)}
                       if check_threads else None,
        # photos of sizes the backend refuses (a TensorRT engine's shape profile), run by another
        "other_backend": {"images": sum("backend" in r for r in done_now), "backend": refused_sizes.chosen,
                          "unavailable": refused_sizes.unavailable} if refused_sizes.chosen or refused_sizes.unavailable else None,
        # None: no other run could write here meanwhile; else why the folder was not locked
        "unlocked": unlocked,
        "lines": _lines_summary(ok_now, line_fit, line_fit_reason),
        # decoded photos held at most, and whether their share of memory held the run back (`HeldPhotos`)
        "held_photos": held.as_dict(),
        "backend_state": backend.describe(),
        "options": {"batch": options.batch, "workers": options.workers, "quality": options.quality, "recursive": options.recursive,
                    "mode": "auto" if options.mode_override < 0 else MODES[options.mode_override]},
        **info,
    }
    summary["versions"] = {**summary.get("versions", {}), **_versions()}
    _write_records(run_dir / SUMMARY_FILE, (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())
    return summary


def _output_intact(output: Path, record: dict) -> bool:
    """Whether an earlier run's output is still there with the size its record gives (records
    from before sizes were recorded: there at all). Images are written without an fsync (~5 ms
    each): after a power cut a file can be left empty or short under its final name."""
    try:
        size = output.stat().st_size
    except OSError:
        return False
    return record.get("output_bytes", size) == size


def _write_records(path: Path, data: bytes) -> None:
    """`write_atomic`; a full disk stops the run with `RecordsUnwritable` (the records so far
    stay in the ``.part`` file, which ``--resume`` reads)."""
    try:
        write_atomic(path, data)
    except OSError as exc:
        raise RecordsUnwritable(f"cannot write the run's records in {path.parent}: {exc.strerror or exc}") from None


def _lines_summary(records: list[dict], line_fit: bool, reason: str) -> dict:
    """How many images of this run got the line fit, and why the others did not."""
    if not line_fit:
        return {"refine": reason}
    fits = [r["lines"] for r in records if "lines" in r]
    kept: dict[str, int] = {}
    for f in fits:
        if not f["applied"]:
            kept[f["code"]] = kept.get(f["code"], 0) + 1
    return {"refine": reason, "applied": sum(f["applied"] for f in fits), "kept_network": dict(sorted(kept.items()))}


def _versions() -> dict:
    import cv2
    import PIL

    from lens import __version__

    out = {"lens": __version__, "numpy": np.__version__, "opencv": cv2.__version__, "pillow": PIL.__version__, "python": platform.python_version()}
    for name in ("onnxruntime", "simplejpeg"):  # simplejpeg decodes the JPEGs: its libjpeg-turbo makes the pixels
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            pass
    return out
