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
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from lens.conventions import MAX_CORNER_RADIUS, PARAM_NAMES, SAFETY_STATS
from lens.runtime.backends import Backend
from lens.runtime.cpu_budget import opencv_threads_per_worker
from lens.runtime.io import DecodedImage, ImageReadError, claim_output_names, encode_image, image_id, list_images, output_format, output_name, read_image, splice_jpeg_metadata, write_atomic
from lens.runtime.lens_maps import correction_maps, lattice_safety, maps_from_lattice
from lens.runtime.memory import keep_freed_memory
from lens.runtime.metadata import IMAGES_FILE, RUN_DIR, SUMMARY_FILE
from lens.runtime.policy import MODES, SafetyThresholds, reasons_from_masks, violations
from lens.runtime.run_folder import RecordsUnwritable, RunRefused, clean_stale_temporaries, exclusive, hold_to_settings, read_records, source_stat
from lens.runtime.sampling import warp_with_maps


@dataclass
class RunOptions:
    batch: int = 1
    workers: int = 2
    resume: bool = False
    quality: int = 95
    mode_override: int = -1  # -1 automatic, else an index into MODES
    codec: str = "auto"  # auto | cpu | gpu: where JPEGs are decoded and encoded (`choose_codec`)
    refine: str = "auto"  # auto | lines | off: refit the lens to the photo's straight lines (`line_fit_plan`)
    recursive: bool = False  # also the subfolders of the input, mirrored under the output


@dataclass
class Job:
    image_id: str
    source: Path
    output: Path
    image: DecodedImage | None = None
    error: str | None = None
    timings: dict = field(default_factory=dict)
    source_stat: list[int] | None = None  # [size in bytes, mtime in ns] when planned (`lens.runtime.run_folder.source_stat`)


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


def _decode(job: Job, keep_jpeg: bool = False) -> Job:
    t = time.perf_counter()
    try:
        job.image = read_image(job.source, keep_jpeg)
        job.error = frame_problem(job.image.height, job.image.width)
    except ImageReadError as exc:  # every decoder fault is one (`read_image`)
        job.error = exc.reason
    if job.error:
        job.image = None
    job.timings["decode_ms"] = (time.perf_counter() - t) * 1e3
    return job


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


def _rgb(job: Job) -> np.ndarray:
    return _rgb_pixels(job.image.pixels)


def _rgb_pixels(px: np.ndarray) -> np.ndarray:
    """Greyscale repeated to 3 channels, alpha dropped: what every graph takes."""
    return np.repeat(px, 3, axis=2) if px.shape[2] == 1 else px[..., :3]


def _rgb_batch(jobs: list[Job]) -> np.ndarray:
    if len(jobs) == 1:  # no second copy for the usual batch of one (np.stack: ~10 ms at 2048 px, against ~3 ms here)
        return np.ascontiguousarray(_rgb(jobs[0]).transpose(2, 0, 1))[None]
    return np.stack([np.ascontiguousarray(_rgb(j).transpose(2, 0, 1)) for j in jobs])


def _joined(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-image outputs as one batch; one image's as they are (no copy of its arrays)."""
    return parts[0] if len(parts) == 1 else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _max_displacement(map_x: np.ndarray, map_y: np.ndarray) -> float:
    """Largest distance between an output pixel and where it samples, on every 8th pixel."""
    v, u = np.mgrid[0 : map_x.shape[0] : 8, 0 : map_x.shape[1] : 8]
    return float(np.sqrt((map_x[::8, ::8] - u) ** 2 + (map_y[::8, ::8] - v) ** 2).max())


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
        return shared_codec(), "gpu: nvImageCodec decodes and encodes RGB JPEGs on the GPU"
    except GpuJpegUnavailable as exc:
        if wanted == "gpu":
            raise BackendUnavailable(str(exc)) from None
        return None, f"cpu ({exc})"


@dataclass
class Refinement:
    """What the line fit did for one image (`fit_lines_checked`)."""

    fit: object  # lens.runtime.plumb_line.LineFit
    safety: dict | None = None  # SAFETY_STATS of the fitted warp
    rejected: str | None = None  # why an accepted fit was not applied
    maps: tuple[np.ndarray, np.ndarray] | None = None  # the fitted warp, once a runner builds it

    @property
    def applied(self) -> bool:
        return self.fit.accepted and self.rejected is None

    def as_dict(self) -> dict:
        out = {"applied": self.applied, **self.fit.as_dict()}
        if self.rejected:
            out["code"], out["reason"] = "unsafe", self.rejected
        return out


def fit_lines_checked(pixels: np.ndarray, params: np.ndarray, thresholds: SafetyThresholds, fit=None) -> Refinement:
    """Refit the network's lens ``params`` to the straight lines of ``(H, W, C)`` pixels with
    ``fit`` (default `refine_with_lines`; `LineFitPool.fit` in a run); an accepted fit is
    applied only if its warp passes the param_only checks. `lens run` and `lens eval` share it."""
    from lens.runtime.plumb_line import refine_with_lines, work_image

    grey = pixels[..., 0] if pixels.shape[2] == 1 else cv2.cvtColor(np.ascontiguousarray(pixels[..., :3]), cv2.COLOR_RGB2GRAY)
    # made here, so that a worker process is handed the small image
    result = Refinement((fit or refine_with_lines)(work_image(np.ascontiguousarray(grey)), params))
    if result.fit.accepted:
        height, width = pixels.shape[:2]
        result.safety = lattice_safety(result.fit.params, height, width)
        unsafe = violations(result.safety, thresholds, check_residual=False)
        if unsafe:
            result.rejected = f"the fitted lens's warp is unsafe ({', '.join(unsafe)})"
    return result


class Runner:
    def __init__(self, backend: Backend, options: RunOptions, thresholds: SafetyThresholds = SafetyThresholds(), has_residual: bool = True,
                 codec=None, line_fits=None):
        self.codec = codec
        self.line_fits = line_fits  # a `LineFitPool` when this run refits lenses to lines
        self.backend = backend
        if codec is not None and getattr(backend, "graphs", None) is not None:
            backend.graphs.capture_guard = codec.exclusive
        self.options = options
        self.t = thresholds
        self.has_residual = has_residual

    def _record(self, job: Job, out: dict[str, np.ndarray], i: int, displacement: float | None, refined: Refinement | None = None) -> dict:
        if "mode" in out:
            mode = int(out["mode"][i])
            safety = {m: dict(zip(SAFETY_STATS, map(float, out["safety"][i][k]))) for k, m in enumerate(MODES)}
            reasons = reasons_from_masks(mode, int(out["violations"][i][0]), int(out["violations"][i][1]), self.has_residual)
        else:  # only the network ran (`_process_refitting`): the line fit replaced its warp before any mode was weighed
            mode, safety, reasons = 1, {}, ["hybrid:replaced_by_line_fit"] if self.has_residual else []
        params = dict(zip(PARAM_NAMES, map(float, out["params"][i])))
        record_extra = {}
        if refined is not None:
            record_extra["lines"] = refined.as_dict()
            if refined.applied:
                # the line fit replaces the network's warp: a parametric one, residual dropped
                record_extra["network_params"] = params
                params = dict(zip(PARAM_NAMES, map(float, refined.fit.params)))
                if mode != 1:
                    reasons = reasons + [f"{MODES[mode]}:replaced_by_line_fit"]
                mode = 1
                safety["param_only"] = refined.safety
        unsafe = violations(safety[MODES[mode]], self.t, check_residual=mode == 0)
        notes = (["alpha_dropped"] if job.image.pixels is not None and job.image.pixels.shape[2] == 4 else []) + list(job.image.notes)
        return {
            "id": job.image_id, "source": str(job.source), "source_stat": job.source_stat, "output": str(job.output), "status": "ok", "error": None,
            "size": [job.image.width, job.image.height], "mode": MODES[mode],
            "reasons": reasons + (["forced"] if self.options.mode_override >= 0 else []),
            "params": params, **record_extra,
            "safety": safety, "hard_unsafe": bool(unsafe), "unsafe_reasons": unsafe, "notes": notes,
            "max_displacement_px": displacement, "timings_ms": {k: round(v, 2) for k, v in job.timings.items()},
        }

    def _refine(self, job: Job, params: np.ndarray) -> Refinement:
        """`fit_lines_checked` with this run's `LineFitPool`, and the warp of an applied fit."""
        t = time.perf_counter()
        result = fit_lines_checked(job.image.pixels, params, self.t, self.line_fits.fit)
        if result.applied:
            result.maps = correction_maps(result.fit.params, job.image.height, job.image.width)
        job.timings["lines_ms"] = (time.perf_counter() - t) * 1e3
        return result

    def _finish(self, jobs: list[Job], out: dict[str, np.ndarray], refinements: list[Refinement] | None = None) -> list[dict]:
        """Warp, encode, write and record each image; ``refinements``: its line fits, where
        already made. A fault on one image (a full disk, an OpenCV assertion) fails that image
        alone: the others of its batch are written and recorded as they would be without it."""
        records = []
        for i, job in enumerate(jobs):
            try:
                records.append(self._finish_one(job, out, i, None if refinements is None else refinements[i]))
            except Exception as exc:
                records.append(fault_record(job, exc))
        return records

    def _finish_one(self, job: Job, out: dict[str, np.ndarray], i: int, refined: Refinement | None) -> dict:
        if refined is None and self.line_fits is not None:
            refined = self._refine(job, out["params"][i])
        t = time.perf_counter()
        if refined is not None and refined.applied:  # the fitted lens's warp replaces the graph's
            warped = warp_with_maps(_rgb(job), *refined.maps)
            displacement = _max_displacement(*refined.maps)
        elif "lattice" in out:
            maps = maps_from_lattice(out["lattice"][i][0], out["lattice"][i][1], job.image.height, job.image.width)
            warped = warp_with_maps(_rgb(job), *maps)
            displacement = _max_displacement(*maps)
        elif "corrected_hwc" in out:
            warped, displacement = out["corrected_hwc"][i], None
        else:
            warped, displacement = np.ascontiguousarray(out["corrected"][i].transpose(1, 2, 0)), None
        if job.image.pixels.shape[2] == 1:  # greyscale in, greyscale out
            warped = warped[..., :1]
        job.timings["warp_ms"] = (time.perf_counter() - t) * 1e3
        t = time.perf_counter()
        result = DecodedImage(np.ascontiguousarray(warped), exif=job.image.exif, icc_profile=job.image.icc_profile, segments=job.image.segments)
        data = encode_image(result, output_format(job.output), self.options.quality)
        write_atomic(job.output, data)
        job.timings["encode_ms"] = (time.perf_counter() - t) * 1e3
        record = self._record(job, out, i, displacement, refined)
        job.image = None  # free the pixels as soon as the file is written
        return record

    def _process_on_device(self, jobs: list[Job]) -> list[dict]:
        """GPU-resident path (`lens.runtime.gpu_jpeg`): decode, infer, warp and encode without
        the pixels leaving the GPU. A file the GPU decoder refuses is decoded on the CPU.
        Decoder, model and encoder each have their own lock, so batches flow through them as
        a pipeline; stage times include waiting for that stage."""
        import torch

        records = []
        t = time.perf_counter()
        tensors = self.codec.decode([j.image.encoded for j in jobs])
        t_dec = time.perf_counter()
        keep = []
        for job, tensor in zip(jobs, tensors):
            if tensor is None:
                try:
                    tensor = torch.from_numpy(_rgb_pixels(read_image(job.source).pixels)).to(self.backend.device)
                except ImageReadError as exc:
                    job.error = exc.reason
                    records.append(failure_record(job))
                    continue
            keep.append((job, tensor))
        if not keep:
            return records
        jobs = [j for j, _ in keep]
        with self.backend.lock:
            out = self.backend.infer_device(torch.stack([x for _, x in keep]).permute(0, 3, 1, 2), self.options.mode_override)
            # Copies: the outputs of a replayed CUDA graph are overwritten by the next batch.
            corrected = out.pop("corrected").permute(0, 2, 3, 1).contiguous()  # (B, H, W, 3) for the encoder
            host = {k: v.cpu().numpy() for k, v in out.items()}
        t_inf = time.perf_counter()
        datas = self.codec.encode(list(corrected.unbind(0)), self.options.quality)
        t_enc = time.perf_counter()
        n = len(jobs)
        for i, (job, data) in enumerate(zip(jobs, datas)):
            job.timings.update(gpu_decode_ms=(t_dec - t) * 1e3 / n, infer_ms=(t_inf - t_dec) * 1e3 / n, gpu_encode_ms=(t_enc - t_inf) * 1e3 / n)
            try:  # as in `_finish`: one image's fault is its own
                t_w = time.perf_counter()
                write_atomic(job.output, splice_jpeg_metadata(data, job.image.exif, job.image.icc_profile, job.image.segments))
                job.timings["write_ms"] = (time.perf_counter() - t_w) * 1e3
                records.append(self._record(job, host, i, None))
                job.image = None
            except Exception as exc:
                records.append(fault_record(job, exc))
        return records

    def process(self, jobs: list[Job]) -> list[dict]:
        """Infer, warp, encode and write one same-size batch; per-image records. A batch whose
        inference faults (the GPU out of memory at a large ``--batch``, a kernel that refuses
        one image) is run again one image at a time, so that only an image that faults alone
        fails; each image so retried says so in its record (``batch_retry``: the batch's
        fault). Its pixels may then differ in the last bits from a batched run's (GPU kernels
        may depend on the batch size), as with another ``--batch``."""
        try:
            return self._process(jobs)
        except Exception as exc:
            if len(jobs) == 1:
                raise
            why = fault_text(exc)
        records = []
        for job in jobs:
            try:
                done = self._process([job])
            except Exception as exc:
                done = [fault_record(job, exc)]
            for rec in done:
                rec["batch_retry"] = f"the batch of {len(jobs)} failed ({why}); this image was run alone"
            records += done
        return records

    def _process(self, jobs: list[Job]) -> list[dict]:
        if jobs[0].image.encoded is not None:
            return self._process_on_device(jobs)
        t = time.perf_counter()
        if self.backend.device_resident:  # channels-last upload; the GPU transposes
            out = self.backend.infer_hwc(np.stack([_rgb(j) for j in jobs]), self.options.mode_override)
        elif not self.backend.samples_on_device:  # the CPU graph, one image at a time: outputs independent of --batch
            if self.line_fits is not None and self.backend.splits_lattice:
                return self._process_refitting(jobs)
            out = _joined([self.backend.infer_lattice(_rgb(j)[None], self.options.mode_override) for j in jobs])
        elif self.backend.batch_invariant or len(jobs) == 1:
            batch = _rgb_batch(jobs)
            out = _joined([self.backend.infer(batch[i : i + 1], self.options.mode_override) for i in range(len(jobs))])
        else:
            out = self.backend.infer(_rgb_batch(jobs), self.options.mode_override)
        per_image = (time.perf_counter() - t) * 1e3 / len(jobs)
        for j in jobs:
            j.timings["infer_ms"] = per_image
        return self._finish(jobs, out)

    def _process_refitting(self, jobs: list[Job]) -> list[dict]:
        """The CPU path with the line fit: per image, the CPU graph's network half, the fit,
        and its warp half (the modes' statistics, the choice and the chosen warp) only where the
        fit is not applied; where it is, the warp half's outputs would all be discarded (~6 ms
        of ~15 ms at 2048 x 1367 on one core). The same bytes as the whole graph."""
        records = []
        for job in jobs:
            t = time.perf_counter()
            out = self.backend.infer_network(_rgb(job)[None], self.options.mode_override)
            job.timings["infer_ms"] = (time.perf_counter() - t) * 1e3
            refined = self._refine(job, out["params"][0])
            if not refined.applied:
                t = time.perf_counter()
                out.update(self.backend.infer_warp(out, job.image.height, job.image.width, self.options.mode_override))
                job.timings["infer_ms"] += (time.perf_counter() - t) * 1e3
            records += self._finish([job], out, [refined])
        return records


def fault_text(exc: BaseException) -> str:
    """An unforeseen exception in one line: its type and message."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def fault_record(job: Job, exc: BaseException) -> dict:
    """``job``'s failure record for a fault no check foresaw: its output could not be written
    (``OSError``: a full disk, a folder in the way), or it could not be corrected (an OpenCV
    assertion, a bug of lens's); the thousands of photos after it go on."""
    if isinstance(exc, OSError):
        return _failure(job, f"cannot write {job.output}: {exc.strerror or exc}")
    return _failure(job, f"could not be corrected ({fault_text(exc)})")


def _failure(job: Job, why: str) -> dict:
    """``job``'s failure record with the reason ``why`` (its pixels freed)."""
    job.error, job.image = why, None
    return failure_record(job)


def failure_record(job: Job) -> dict:
    return {"id": job.image_id, "source": str(job.source), "output": None, "status": "failed", "error": job.error,
            "mode": None, "reasons": [], "hard_unsafe": False, "timings_ms": job.timings}


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
        settings["batch"] = options.batch
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
    with exclusive(run_dir), opencv_threads_per_worker(options.workers):
        return _run_locked(src, out, run_dir, backend, options, info, on_image, has_residual, codec_choice, on_skipped)


def _run_locked(src: Path, out: Path, run_dir: Path, backend: Backend, options: RunOptions, info: dict,
                on_image: Callable[[dict], None] | None, has_residual: bool, codec_choice: tuple | None,
                on_skipped: Callable[[int], None] | None) -> dict:
    line_fit, line_fit_reason = line_fit_plan(backend, options)
    codec, codec_reason = codec_choice or choose_codec(backend, options.codec, line_fit)
    hold_to_settings(run_dir, output_settings(backend, options, info, line_fit, codec is not None), options.resume)
    clean_stale_temporaries(out, options.recursive)
    jobs, refused = plan(src, out, options.recursive)
    previous = read_records(run_dir) if options.resume else {}
    # an input replaced since (another size or time) is corrected again
    skipped = [j for j in jobs if previous.get(j.image_id, {}).get("status") == "ok" and j.output.exists()
               and previous[j.image_id].get("source_stat", j.source_stat) == j.source_stat]
    skip_ids = {j.image_id for j in skipped}
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

    def failed(job: Job) -> None:
        record(failure_record(job))

    for r in refused:
        record(r)
    line_fits = None
    if line_fit:
        from lens.runtime.plumb_line import LineFitPool

        line_fits = LineFitPool.for_workers(options.workers)
    runner = Runner(backend, options, has_residual=has_residual, codec=codec, line_fits=line_fits)
    t0 = time.perf_counter()
    workers = max(1, options.workers)
    # The CPU graph infers one image at a time (`Runner.process`): there a larger --batch would
    # only hold more decoded photos (a batch of 16: 16x the decodes in flight) for nothing
    batch = max(1, options.batch) if backend.samples_on_device or backend.device_resident else 1
    try:
        with ThreadPoolExecutor(workers) as pool:
            window = max(2, 2 * workers * batch)
            decode_futures: list[Future] = []
            it = iter(todo)

            def decoded() -> Iterator[Job]:
                for job in it:  # keep a bounded window of decodes in flight
                    decode_futures.append(pool.submit(_decode, job, codec is not None))
                    if len(decode_futures) >= window:
                        yield decode_futures.pop(0).result()
                while decode_futures:
                    yield decode_futures.pop(0).result()

            in_flight: list[tuple[Future, list[Job]]] = []

            def drain(limit: int) -> None:
                while len(in_flight) > limit:
                    fut, batch_jobs = in_flight.pop(0)
                    try:
                        records_done = fut.result()
                    except Exception as exc:  # faults of one image are caught inside; this is an image alone
                        records_done = [fault_record(j, exc) for j in batch_jobs]
                    for rec in records_done:
                        record(rec)

            try:
                for batch_jobs in _batches(decoded(), batch, failed):
                    in_flight.append((pool.submit(runner.process, batch_jobs), batch_jobs))
                    drain(workers)
                drain(0)
            except KeyboardInterrupt:
                # Ctrl-C: images not started are dropped; those being written finish and are
                # recorded, so that --resume skips them
                for fut in decode_futures:
                    fut.cancel()
                in_flight[:] = [(f, b) for f, b in in_flight if not f.cancel()]  # cancel(): True if it had not started
                drain(0)
                raise
    finally:
        try:
            part.close()
        except OSError:  # what it could not flush, `record` has already reported
            pass
        if line_fits is not None:
            line_fits.close()
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
        "modes": {m: sum(r.get("mode") == m for r in ordered) for m in MODES},
        "hard_unsafe": [r["id"] for r in ordered if r.get("hard_unsafe")],
        # images of this run whose batch faulted, each then run alone (`Runner.process`)
        "batch_retried": sum(bool(r.get("batch_retry")) for r in done_now),
        # what outputs could not keep of their inputs (alpha, other frames, depth, a profile)
        "notes": dict(sorted(Counter(n for r in ordered if r["status"] == "ok" for n in r.get("notes", [])).items())),
        "throughput": {"images": len(ok_now), "wall_s": round(wall, 3), "images_per_s": round(len(ok_now) / wall, 3) if wall > 0 else None},
        "codec": codec_reason,
        "lines": _lines_summary(ok_now, line_fit, line_fit_reason),
        "backend_state": backend.describe(),
        "options": {"batch": options.batch, "workers": options.workers, "quality": options.quality, "recursive": options.recursive,
                    "mode": "auto" if options.mode_override < 0 else MODES[options.mode_override]},
        **info,
    }
    summary["versions"] = {**summary.get("versions", {}), **_versions()}
    _write_records(run_dir / SUMMARY_FILE, (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())
    return summary


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
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return out
