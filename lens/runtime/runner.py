"""One same-size batch of decoded photos through `lens run` (`Runner.process`): inference, the
line fit, the mode, the warp, encode and atomic write, and each photo's record; a fault is one
photo's (`fault_record`). `lens.runtime.pipeline` feeds it batches and keeps the records."""
from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from lens.conventions import PARAM_NAMES, SAFETY_STATS
from lens.runtime.backends import Backend
from lens.runtime.io import DISK_FULL, DamagedJpeg, DecodedImage, ImageReadError, encode_image, exif_fits_jpeg, jpeg_metadata_pieces, output_format, read_image, write_atomic
from lens.runtime.lens_maps import correction_maps, lattice_safety, maps_from_lattice
from lens.runtime.policy import MODES, SafetyThresholds, reasons_from_masks, violations
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
    disk_full: bool = False  # its output failed for want of space or quota (`fault_record`): the run stops
    output_bytes: int | None = None  # the size of the output written, recorded for --resume to check
    source_stat: list[int] | None = None  # [size in bytes, mtime in ns] when planned (`lens.runtime.run_folder.source_stat`)


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


# The GPU codec path's GPU work (decode; model, warp and encode) one batch at a time, whichever
# worker thread holds the batch, while the other threads read headers and write files. Measured
# with tools/gpu_stages.py (H200, 4 threads, batch 16, same process): at 2048 x 1367 `lens run`
# was faster this way in 4 of 4 pairs (e.g. 738 against 631 images/s), at 4000 x 3000 within
# noise (~230 both). nvImageCodec's decode + encode alone, from four threads at once against one
# (tools/bench_gpu.py, 2048 x 1367): 994 against 1806 images/s on an H100, 1777 against 1745
# and 1146 against 1088 on an H200: several callers gain it little and can cost it much.
SERIAL_DEVICE_WORK = True


class Runner:
    """The batches of one run, each through `process` on a worker thread: the backend, the
    line fits (``line_fits``, a `LineFitPool`, when the run refits lenses) and the GPU codec
    (``codec``) are shared by every worker."""

    def __init__(self, backend: Backend, options: RunOptions, thresholds: SafetyThresholds = SafetyThresholds(), has_residual: bool = True,
                 codec=None, line_fits=None):
        self.codec = codec
        self.device_work = threading.Lock() if SERIAL_DEVICE_WORK else contextlib.nullcontext()
        self.line_fits = line_fits  # a `LineFitPool` when this run refits lenses to lines
        self.backend = backend
        if codec is not None and getattr(backend, "graphs", None) is not None:
            backend.graphs.capture_guard = codec.exclusive
        self.options = options
        self.t = thresholds
        self.has_residual = has_residual

    def _record(self, job: Job, out: dict[str, np.ndarray], i: int, displacement: float | None, refined: Refinement | None = None,
                alpha_kept: bool = False) -> dict:
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
        alpha_dropped = job.image.pixels is not None and job.image.pixels.shape[2] == 4 and not alpha_kept
        exif_dropped = output_format(job.output) == "JPEG" and not exif_fits_jpeg(job.image.exif)
        notes = (["alpha_dropped"] if alpha_dropped else []) + (["exif_dropped"] if exif_dropped else []) + list(job.image.notes)
        return {
            "id": job.image_id, "source": str(job.source), "source_stat": job.source_stat, "output": str(job.output), "output_bytes": job.output_bytes, "status": "ok", "error": None,
            "size": [job.image.width, job.image.height], "mode": MODES[mode],
            "reasons": reasons + (["forced"] if self.options.mode_override >= 0 else []),
            "params": params, **record_extra,
            "safety": safety, "hard_unsafe": bool(unsafe), "unsafe_reasons": unsafe, "notes": notes, "decode_warnings": list(job.image.warnings),
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
        # OpenCV samples here the maps a CPU graph or a line fit gave: a PNG keeps its alpha,
        # warped with its colour, and greyscale is warped as its one channel (a graph that
        # samples itself takes RGB only)
        keep_alpha = job.image.pixels.shape[2] == 4 and output_format(job.output) == "PNG"
        source = job.image.pixels if keep_alpha or job.image.pixels.shape[2] == 1 else _rgb(job)
        if refined is not None and refined.applied:  # the fitted lens's warp replaces the graph's
            warped = warp_with_maps(source, *refined.maps)
            displacement = _max_displacement(*refined.maps)
        elif "lattice" in out:
            maps = maps_from_lattice(out["lattice"][i][0], out["lattice"][i][1], job.image.height, job.image.width)
            warped = warp_with_maps(source, *maps)
            displacement = _max_displacement(*maps)
        elif "corrected_hwc" in out:
            warped, displacement, keep_alpha = out["corrected_hwc"][i], None, False
        else:
            warped, displacement, keep_alpha = np.ascontiguousarray(out["corrected"][i].transpose(1, 2, 0)), None, False
        if job.image.pixels.shape[2] == 1:  # greyscale in, greyscale out
            warped = warped[..., :1]
        job.timings["warp_ms"] = (time.perf_counter() - t) * 1e3
        t = time.perf_counter()
        result = DecodedImage(np.ascontiguousarray(warped), exif=job.image.exif, icc_profile=job.image.icc_profile, segments=job.image.segments)
        data = encode_image(result, output_format(job.output), self.options.quality)
        job.output_bytes = write_atomic(job.output, data)
        job.timings["encode_ms"] = (time.perf_counter() - t) * 1e3
        record = self._record(job, out, i, displacement, refined, alpha_kept=keep_alpha)
        job.image = None  # free the pixels as soon as the file is written
        return record

    def _process_on_device(self, jobs: list[Job]) -> list[dict]:
        """GPU-resident path (`lens.runtime.gpu_jpeg`): decode, infer, warp and encode without
        the pixels leaving the GPU. A file the GPU decoder refuses is decoded on the CPU.
        Decoder, model and encoder each have their own CUDA stream; one batch at a time does its
        GPU work (`SERIAL_DEVICE_WORK`) while other threads read and write files. Stage times
        include waiting for that stage."""
        records = []
        t = time.perf_counter()
        with self.device_work:
            tensors, ready = self.codec.decode([j.image.encoded for j in jobs])
        t_dec = time.perf_counter()
        keep = []
        for job, tensor in zip(jobs, tensors):
            if tensor is None:
                try:
                    tensor = _rgb_pixels(read_image(job.source).pixels)
                except ImageReadError as exc:
                    job.error = exc.reason
                    records.append(failure_record(job))
                    continue
            keep.append((job, tensor))
        if not keep:
            return records
        jobs = [j for j, _ in keep]
        with self.device_work:  # a file the GPU decoder refused was decoded on the CPU outside it
            host, corrected = self.backend.run_device([x for _, x in keep], self.options.mode_override, ready)
            del tensors, keep  # the decoder's buffers: the batch that read them is done
            t_inf = time.perf_counter()
            datas = self.codec.encode(list(corrected.unbind(0)), self.options.quality)
        t_enc = time.perf_counter()
        n = len(jobs)
        for i, (job, data) in enumerate(zip(jobs, datas)):
            job.timings.update(gpu_decode_ms=(t_dec - t) * 1e3 / n, infer_ms=(t_inf - t_dec) * 1e3 / n, gpu_encode_ms=(t_enc - t_inf) * 1e3 / n)
            if problem := _data_check_problem(job):
                records.append(failed_because(job, problem))
                continue
            try:  # as in `_finish`: one image's fault is its own
                t_w = time.perf_counter()
                job.output_bytes = write_atomic(job.output, jpeg_metadata_pieces(data, job.image.exif, job.image.icc_profile, job.image.segments))
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


def _data_check_problem(job: Job) -> str | None:
    """Why ``job``'s JPEG, decoded on the GPU, must not be written: the damage its host check
    found (`lens.runtime.io.check_jpeg_data`), the reason a CPU decode gives; else None, and
    libjpeg's warning, if any, goes into its record as on the CPU path."""
    check = job.image.data_check
    if check is None:
        return None
    t = time.perf_counter()
    try:
        warning, check_ms = check.result()
    except DamagedJpeg as exc:
        return str(exc)
    except Exception as exc:  # its own fault, not the batch's (the others of the batch are written)
        return f"its JPEG data could not be checked for damage ({fault_text(exc)})"
    finally:
        job.timings["check_wait_ms"] = (time.perf_counter() - t) * 1e3
    job.timings["data_check_ms"] = check_ms
    if warning:
        job.image.warnings = (warning,)
    return None


def fault_text(exc: BaseException) -> str:
    """An unforeseen exception in one line: its type and message."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def fault_record(job: Job, exc: BaseException) -> dict:
    """``job``'s failure record for a fault no check foresaw: its output could not be written
    (``OSError``: a folder in the way, a full disk), or it could not be corrected (an OpenCV
    assertion, a bug of lens's); the thousands of photos after it go on, but for a full disk
    (``job.disk_full``), where `lens.runtime.pipeline` stops the run."""
    if isinstance(exc, OSError):
        job.disk_full = exc.errno in DISK_FULL
        return failed_because(job, f"cannot write {job.output}: {exc.strerror or exc}")
    return failed_because(job, f"could not be corrected ({fault_text(exc)})")


def failed_because(job: Job, why: str) -> dict:
    """``job``'s failure record with the reason ``why`` (its pixels freed)."""
    job.error, job.image = why, None
    return failure_record(job)


def failure_record(job: Job) -> dict:
    return {"id": job.image_id, "source": str(job.source), "output": None, "status": "failed", "error": job.error,
            "mode": None, "reasons": [], "hard_unsafe": False, "timings_ms": job.timings}
