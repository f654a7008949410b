"""The `lens` command line: each command is a thin layer over a library call.

Typer turns typed function signatures into the CLI and its help; Rich draws the progress bars
and tables. Heavy imports (torch, onnxruntime) happen inside the commands so that
``lens --help`` is instant and each command needs only its own dependencies.
"""
from __future__ import annotations

import math
import os
import re
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape as _markup_escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lens import __version__

LOG_WIDTH = 160  # columns of the console's lines when it writes to a file or a pipe

class _LensApp(typer.Typer):
    """The app; its one catch-all is a full disk (or an exceeded quota), which any command that
    writes (a zip, a report, a checkpoint, an export, pairs) can meet: a line saying so, exit
    code 1, instead of a traceback through zipfile or torch. `lens run` stops on it itself,
    with the way on (`--resume`)."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except OSError as exc:
            from lens.runtime.io import DISK_FULL  # here: `lens --help` need not import the runtime

            if exc.errno not in DISK_FULL:
                raise
            where = f" writing {exc.filename}" if exc.filename else ""
            console.print(f"[red]error:[/] {escape(exc.strerror or str(exc))}{escape(where)}: free some space and run the command again",
                          soft_wrap=True)
            sys.exit(1)


app = _LensApp(
    name="lens",
    help="Automatic lens-distortion correction: predict, export, run, check and package.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
)
console = Console(stderr=True)

_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def escape(text: str) -> str:
    """``text`` for the console: Rich's markup escaped, and control characters shown as
    ``\\n``, ``\\x1b``: a file named with a newline or a terminal escape sequence cannot
    break a line in two or restyle the terminal."""
    return _markup_escape(_CONTROL_CHARACTERS.sub(lambda m: repr(m.group())[1:-1], text))


if not console.is_terminal and "COLUMNS" not in os.environ:
    # a log (cron, CI, a service's journal) is no terminal: Rich would squeeze tables into its
    # default 80 columns and cut their numbers short ("8.94e…"); COLUMNS, if set, still decides
    console.width = LOG_WIDTH


def _output_place(value: Optional[Path]) -> Optional[Path]:
    """Typer callback of an option naming a file or folder to create: a path through a file
    (``--out photo.jpg/build``) is refused before any work; it failed at the end, on a
    FileExistsError or NotADirectoryError traceback."""
    if value is not None:
        for parent in value.parents:  # the nearest that exists decides
            if parent.exists():
                if not parent.is_dir():
                    raise typer.BadParameter(f"{value} goes through {parent}, which is a file, not a folder")
                break
    return value


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lens {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Automatic lens-distortion correction: predict, export, run, check and package."""
    from lens.runtime.onnxruntime_install import conflict_message

    # Pillow warns while opening a JPEG whose EXIF block it cannot parse ("Tag data larger than
    # file", "Truncated File Read": it reads the block for the DPI), naming neither the file nor
    # anything lens does with it: lens copies the block as it is, and names every file it cannot
    # read. Over a folder of edited photos that was a screen of noise. Set here, for the
    # process the CLI owns, not in the library: catch_warnings is not thread-safe.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")

    problem = conflict_message()
    if problem:
        console.print(f"[red]error:[/] {escape(problem)}", soft_wrap=True)
        raise typer.Exit(2)


class _LoggedProgress(Progress):
    """Rich's progress bar, which in a log (no terminal) is drawn once, at the end: a run of
    thousands of photos under cron or systemd would say nothing for hours. There, each task
    also prints a plain line at most every `progress_every_s` seconds as it advances."""

    def __init__(self, *columns, counts: bool, **kwargs):
        super().__init__(*columns, **kwargs)
        self.counts = counts
        self.every_s = progress_every_s() if not self.console.is_terminal else None
        self.last_logged = time.monotonic()
        self.log_lock = threading.Lock()  # workers advance the bar from their threads

    def update(self, task_id, **kwargs) -> None:
        super().update(task_id, **kwargs)
        self._log_if_due(task_id)

    def advance(self, task_id, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._log_if_due(task_id)

    def _log_if_due(self, task_id) -> None:
        if self.every_s is None:
            return
        with self.log_lock:
            now = time.monotonic()
            if now - self.last_logged < self.every_s:
                return
            self.last_logged = now
        task = next(t for t in self.tasks if t.id == task_id)
        done = f"{int(task.completed)}/{int(task.total)} ({task.percentage:.0f}%)" if self.counts and task.total else f"{task.percentage:.0f}%"
        rate = str(task.fields.get("rate", "")).strip()
        line = f"{task.description}: {done}" + (f", {rate}" if rate else "") + f", {_duration(task.elapsed or 0)} elapsed"
        if task.time_remaining is not None:
            line += f", about {_duration(task.time_remaining)} left"
        self.console.print(escape(line), soft_wrap=True, highlight=False)


def progress_every_s() -> float:
    """Seconds between the progress lines of a log (`_LoggedProgress`): ``LENS_PROGRESS_EVERY_S``, else 30."""
    try:
        return max(0.0, float(os.environ.get("LENS_PROGRESS_EVERY_S", "30")))
    except ValueError:
        return 30.0


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _progress(counts: bool = True) -> Progress:
    return _LoggedProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn() if counts else TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        counts=counts,
    )


@contextmanager
def _sigterm_stops_like_ctrl_c():
    """While inside, SIGTERM (a stopped container or service: Kubernetes, systemd, docker stop)
    stops a run as Ctrl-C does: the images being written finish and are recorded. Yields a
    cell that names the signal once it came."""
    import signal
    import threading

    cell: list[str | None] = [None]

    def handler(signum, frame) -> None:
        cell[0] = "stopped (SIGTERM)"
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield cell
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield cell
    finally:
        signal.signal(signal.SIGTERM, previous)


def _require_torch(command: str) -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        console.print(f"[red]error:[/] `lens {command}` builds its warp with torch, which is not installed.\n"
                      "Install it with:  pip install torch   (or the project's [train] extra)")
        raise typer.Exit(2)


# ---------------------------------------------------------------- runtime


@app.command("run")
def run_cmd(
    src: Path = typer.Argument(..., exists=True, help="An image or a folder of images.", show_default=False),
    out: Path = typer.Argument(..., file_okay=False, help="Output folder (images keep their stem; metadata in `lens-run/`).", show_default=False),
    build: Optional[Path] = typer.Option(None, exists=True, file_okay=False, help="A `lens export` build folder (default: the embedded default model)."),
    checkpoint: Optional[Path] = typer.Option(None, exists=True, dir_okay=False, help="Run a checkpoint with the torch backend (needs torch)."),
    backend: str = typer.Option("auto", help="auto | tensorrt | onnxruntime | torch."),
    device: str = typer.Option("auto", help="auto | cuda | cpu."),
    batch: int = typer.Option(0, min=0, help="Images per inference on GPU backends (0: 16, or a TensorRT engine's most; the CPU infers one image at a time)."),
    workers: int = typer.Option(0, min=0, help="Worker threads for decode / infer / warp / encode, which also fit lines (in processes above 2 workers or from 96 photos, at most one per core) (0: one per core this process may use: its CPU affinity and container CPU quota)."),
    resume: bool = typer.Option(False, help="Skip images whose output and record already exist (an input changed since is redone; OUT written with other settings is refused)."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Also the photos in IN's subfolders, mirrored under OUT (folders holding an earlier run's lens-run/ are left out)."),
    quality: int = typer.Option(95, min=1, max=100, help="JPEG quality (4:4:4 chroma)."),
    mode: str = typer.Option("auto", help="auto, or force hybrid | param_only | param_only_conservative."),
    codec: str = typer.Option("auto", help="auto | cpu | gpu: JPEG decode/encode on the GPU needs the torch backend on CUDA and nvImageCodec ('.[gpu-codecs]')."),
    refine: str = typer.Option("auto", help="auto | lines | off: refit each lens to the photo's straight lines (~0.05 s of a CPU core per 2048-px photo); auto: on the CPU path, off on GPU backends."),
) -> None:
    """Correct a folder of photos with the default model (or a build / checkpoint).

    Chooses TensorRT, ONNX Runtime CUDA or CPU (and says why), checks every warp's safety and
    falls back hybrid -> param_only -> param_only_conservative, writes each output atomically
    with its input's size and stem (JPEG 95 4:4:4, PNG stays PNG), and records per-image
    metadata and a summary in `OUT/lens-run/`. Exit code 1 if any image failed, 2 if the run
    was refused before writing anything (another run writing to OUT, --resume with other
    settings, OUT = SRC, no images), 130 if interrupted (143 on SIGTERM)."""

    from lens.runtime.backends import BackendUnavailable, read_manifest, select_backend
    from lens.runtime.cpu_budget import usable_cores
    from lens.runtime.pipeline import RunOptions, run
    from lens.runtime.policy import MODES
    from lens.runtime.metadata import RUN_DIR
    from lens.runtime.run_folder import RecordsUnwritable, RunRefused, read_records

    if mode != "auto" and mode not in MODES:
        raise typer.BadParameter(f"choose auto or one of {', '.join(MODES)}", param_hint="--mode")
    if refine not in ("auto", "lines", "off"):
        raise typer.BadParameter("choose auto, lines or off", param_hint="--refine")
    if src.is_dir() and out.resolve() == src.resolve():  # corrected copies would replace the originals
        raise typer.BadParameter(f"{out} is the input folder: the corrected photos would replace the originals; choose another folder",
                                 param_hint="OUT")
    # as --recursive leaves such subfolders out (a run refused before correcting anything, as
    # `lens run photos/a.jpg photos/` is, leaves only failures there: not an output)
    if src.is_dir() and any(r.get("status") == "ok" for r in read_records(src / RUN_DIR).values()):
        raise typer.BadParameter(f"{src} holds {RUN_DIR}/: it is an earlier lens run's output, and its photos would be corrected a second time; "
                                 f"run on the originals (or, if these are new photos, remove {src / RUN_DIR})", param_hint="SRC")
    from lens.runtime.io import IMAGE_SUFFIXES, output_name, scan_inputs

    if not out.exists() and out.suffix.lower() in IMAGE_SUFFIXES:  # `lens run a.jpg b.jpg` would make a folder b.jpg/ holding a.jpg
        example = f"writes corrected/{output_name(src)}" if src.is_file() else "writes the photos into corrected/"
        raise typer.BadParameter(f"{out} looks like an image file name: OUT is the folder the corrected "
                                 f"photos go to, under their own names (lens run {src} corrected/ {example})", param_hint="OUT")

    images, ignored, targets = scan_inputs(src, recursive, out.resolve()) if src.is_dir() else ([src], {}, 0)
    total = len(images)
    if ignored:  # a shoot's HEIC or RAW files must not vanish without a word
        console.print(f"ignored (not a {'/'.join(s[1:] for s in IMAGE_SUFFIXES)} file): "
                      + ", ".join(f"{n} {suffix}" for suffix, n in ignored.items()), soft_wrap=True)
    if targets:
        console.print(f"left out: {targets} workload target(s) (<id>_generated.jpg beside its input <id>_original.jpg, "
                      "which is corrected to <id>.jpg)", soft_wrap=True)
    if total == 0:
        console.print(f"[red]error:[/] no images in {escape(str(src))}", soft_wrap=True)
        raise typer.Exit(2)
    try:
        choice = select_backend(backend, device, build, checkpoint)
    except BackendUnavailable as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2)
    console.print(f"backend: {escape(choice.reason)}", soft_wrap=True)
    info: dict = {"backend": {**choice.backend.describe(), "reason": choice.reason}}
    has_residual = True
    if checkpoint is None or build is not None:
        from lens.runtime.backends import DEFAULT_BUILD

        manifest = read_manifest(build or DEFAULT_BUILD)
        info["model"] = {"build": str(build or "embedded default"), "checkpoint_sha256": manifest["checkpoint"]["sha256"],
                         "onnx": manifest["onnx"], "stage": manifest["checkpoint"]["stage"]}
        info["engines"] = manifest.get("engines", [])
        has_residual = manifest.get("uses_residual", True)
    else:
        import hashlib

        info["model"] = {"checkpoint": str(checkpoint), "checkpoint_sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest()}
    from lens.runtime.pipeline import batch_plan, choose_codec, line_fit_plan

    batch, batch_reason = batch_plan(choice.backend, batch)
    options = RunOptions(batch=batch, workers=workers or usable_cores(), resume=resume, quality=quality,
                         mode_override=-1 if mode == "auto" else MODES.index(mode), codec=codec, refine=refine,
                         recursive=recursive)
    line_fit, line_fit_reason = line_fit_plan(choice.backend, options)
    try:
        codec_choice = choose_codec(choice.backend, codec, line_fit)
    except BackendUnavailable as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2)
    console.print(f"codec: {escape(codec_choice[1])}", soft_wrap=True)
    if choice.backend.samples_on_device or choice.backend.device_resident:
        console.print(f"batch: {escape(batch_reason)}", soft_wrap=True)
    console.print(f"line fit: {escape(line_fit_reason)}", soft_wrap=True)
    if ignored:
        info["ignored_files"] = ignored
    if targets:
        info["workload_targets_left_out"] = targets
    t0 = time.perf_counter()
    with _progress() as progress:
        task = progress.add_task("lens run", total=total, rate="")
        done = [0]

        def on_image(rec: dict) -> None:
            done[0] += 1
            if rec["status"] != "ok":
                progress.console.print(f"[red]failed:[/] {escape(str(rec.get('source')))}: {escape(str(rec['error']))}", soft_wrap=True)
            progress.update(task, advance=1, rate=f"{done[0] / max(1e-9, time.perf_counter() - t0):5.1f} img/s")

        with _sigterm_stops_like_ctrl_c() as stopped_by:
            try:
                summary = run(src, out, choice.backend, options, info, on_image=on_image, has_residual=has_residual, codec_choice=codec_choice,
                              on_skipped=lambda n: progress.update(task, total=total - n))
            except RunRefused as exc:
                progress.stop()
                console.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
                raise typer.Exit(2)
            except RecordsUnwritable as exc:
                progress.stop()
                console.print(f"[red]error:[/] {escape(str(exc))}; stopped after {done[0]} of {progress.tasks[0].total:.0f} images. "
                              "Every output written is complete: free some space and add --resume to the same command to go on.", soft_wrap=True)
                raise typer.Exit(1)
            except KeyboardInterrupt:
                progress.stop()
                console.print(f"[yellow]{stopped_by[0] or 'interrupted'}[/] after {done[0]} of {progress.tasks[0].total:.0f} images; "
                              "every output written is complete. Add --resume to the same command to go on.", soft_wrap=True)
                raise typer.Exit(143 if stopped_by[0] else 130)
    modes = ", ".join(f"{m} {n}" for m, n in summary["modes"].items() if n)
    skipped, this_run = summary["skipped_resume"], summary["ok"] - summary["skipped_resume"]
    # the counts are the folder's, earlier runs' images included: say which part this run did
    done_here = f": {this_run} in this run, {skipped} skipped as done by an earlier run (--resume)" if skipped else ""
    console.print(f"{summary['ok']} corrected ({modes or 'none'}){done_here}, {len(summary['failed'])} failed; "
                  f"{summary['throughput']['images_per_s'] or 0:.2f} images/s -> {escape(str(out))}", soft_wrap=True)
    if summary["outputs_redone"]:
        console.print(f"{summary['outputs_redone']} images an earlier run had corrected were corrected again: their output was gone or not "
                      "the size recorded (cut short by a power cut, or changed since)", soft_wrap=True)
    lines = summary["lines"]
    if "applied" in lines and this_run:
        kept = "; ".join(f"{n} {reason}" for reason, n in sorted(lines["kept_network"].items()))
        console.print(f"line fit: {lines['applied']} of {this_run} lenses refitted to straight lines"
                      + (f" (network's kept: {kept})" if kept else ""), soft_wrap=True)
    if summary["unlocked"]:
        console.print(f"[yellow]note:[/] {escape(str(out))} was not locked for this run: {escape(summary['unlocked'])}; "
                      "a second lens run into it at the same time would not have been refused", soft_wrap=True)
    if summary["held_photos"]["capped"]:
        held = summary["held_photos"]
        console.print(f"[yellow]note:[/] memory held the run back: it held at most {held['peak']} decoded photos (up to "
                      f"{held['largest_photo_bytes'] / 1e6:.0f} MB each) within the {held['budget_bytes'] / 1e9:.1f} GB it may fill (half of "
                      "the memory available at its start), fewer than --workers and --batch would read ahead; a smaller --batch or "
                      "--workers asks for less", soft_wrap=True)
    if summary["other_backend"]:
        other = summary["other_backend"]
        if other["backend"]:
            console.print(f"{other['images']} photos of sizes {escape(choice.backend.name)} refuses (its engine's shape profile) were "
                          f"corrected by {escape(other['backend'])}; which ones: 'backend' in "
                          f"{escape(str(out / 'lens-run' / 'images.jsonl'))}", soft_wrap=True)
        else:
            console.print(f"[yellow]note:[/] photos of sizes {escape(choice.backend.name)} refuses (its engine's shape profile) failed: "
                          f"no other backend could take them ({escape(other['unavailable'])}); export with a wider "
                          "--max-shape / --min-shape", soft_wrap=True)
    checks = summary["jpeg_checks"]
    if checks and checks["waited_s"] > 0.1 * summary["throughput"]["wall_s"]:
        console.print(f"[yellow]note:[/] the host's checks of JPEG data for damage held the run back: writes waited {checks['waited_s']:.1f} s "
                      f"for them in all, over {checks['threads']} threads (every core but 2); more cores check faster", soft_wrap=True)
    if summary["batch_retried"]:
        console.print(f"{summary['batch_retried']} images were run one at a time after their batch failed (a smaller --batch may "
                      f"avoid it); the batches' faults: 'batch_retry' in {escape(str(out / 'lens-run' / 'images.jsonl'))}", soft_wrap=True)
    if summary["decode_warnings"]:
        ids = summary["decode_warnings"]
        console.print(f"[yellow]note:[/] {len(ids)} photos decoded in spite of libjpeg's warning (stray bytes before the end marker: "
                      "some cameras' padding, DJI drones' among them, or damage that garbles the rest of the photo): look at "
                      + escape(", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else ""))
                      + f"; what it said: 'decode_warnings' in {escape(str(out / 'lens-run' / 'images.jsonl'))}", soft_wrap=True)
    if summary["notes"]:
        said = {"alpha_dropped": "alpha channel", "depth_reduced": "bits beyond 8", "frames_dropped": "images after the first",
                "icc_dropped": "a CMYK or Lab colour profile", "motion_video_dropped": "a Motion Photo's video",
                "depth_dropped": "a Dynamic Depth photo's depth map", "exif_dropped": "EXIF too large for a JPEG (over 64 KB)"}
        console.print("not kept from their inputs: " + ", ".join(f"{said.get(note, note)} ({n} {note})" for note, n in summary["notes"].items())
                      + f"; which ones: {escape(str(out / 'lens-run' / 'images.jsonl'))}", soft_wrap=True)
    if summary["failed"]:
        raise typer.Exit(1)


@app.command()
def undistort(
    src: Path = typer.Argument(..., help="An image file or a folder of images.", exists=True, show_default=False),
    dst: Path = typer.Argument(..., help="Output file (for one input file) or folder.", show_default=False),
    k1: float = typer.Option(0.0, help="Radial coefficient of r^2 (negative = barrel)."),
    k2: float = typer.Option(0.0, help="Radial coefficient of r^4."),
    k3: float = typer.Option(0.0, help="Radial coefficient of r^6."),
    p1: float = typer.Option(0.0, help="Tangential coefficient p1 (OpenCV convention)."),
    p2: float = typer.Option(0.0, help="Tangential coefficient p2 (OpenCV convention)."),
    focal: Optional[float] = typer.Option(None, help="Focal length in pixels (default: the image width)."),
    cx: Optional[float] = typer.Option(None, help="Principal point x in pixels (default: (W-1)/2)."),
    cy: Optional[float] = typer.Option(None, help="Principal point y in pixels (default: (H-1)/2)."),
    alpha: float = typer.Option(0.0, min=0.0, max=1.0, help="Framing as OpenCV's getOptimalNewCameraMatrix: 0 crops to valid pixels (no black border), 1 keeps all input pixels."),
    zoom: Optional[float] = typer.Option(None, min=1e-3, help="Instead of --alpha: output focal length = input focal length x ZOOM."),
    quality: int = typer.Option(95, min=1, max=100, help="JPEG quality (chroma is never subsampled)."),
) -> None:
    """Undistort photos with known Brown-Conrady coefficients (OpenCV's camera model).

    Each output has its input's size and name; JPEGs are written at --quality with 4:4:4
    chroma, PNGs stay PNG, EXIF and ICC profiles are kept. Unreadable files are reported and
    skipped; the exit code is 1 if any file failed.
    """
    _require_torch("undistort")
    from lens.undistort import LensSpec, OutputCamera, plan_outputs, undistort_files

    for hint, value in (("--k1", k1), ("--k2", k2), ("--k3", k3), ("--p1", p1), ("--p2", p2), ("--focal", focal), ("--cx", cx), ("--cy", cy)):
        if value is not None and not math.isfinite(value):  # nan and inf parse as floats: a traceback from the first image
            raise typer.BadParameter(f"a lens parameter is a finite number, not {value}", param_hint=hint)
    if focal is not None and not focal > 0:  # was a traceback from the first image
        raise typer.BadParameter(f"a focal length is a positive number of pixels, not {focal}", param_hint="--focal")
    spec = LensSpec(k1, k2, k3, p1, p2, focal, cx, cy)
    try:
        camera = OutputCamera(alpha=alpha, zoom=zoom)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    try:
        pairs = plan_outputs(src, dst)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="DST") from None
    if not pairs:
        console.print(f"[red]error:[/] no images found in {escape(str(src))}", soft_wrap=True)
        raise typer.Exit(2)
    failures = 0
    with _progress() as progress:
        task = progress.add_task("undistort", total=len(pairs), rate="")

        def done(result) -> None:
            nonlocal failures
            if result.error:
                failures += 1
                progress.console.print(f"[red]failed:[/] {escape(str(result.source))}: {escape(result.error)}", soft_wrap=True)
            progress.advance(task)

        undistort_files(pairs, spec, camera, quality, on_done=done)
    console.print(f"{len(pairs) - failures} written, {failures} failed -> {escape(str(dst))}", soft_wrap=True)
    if failures:
        raise typer.Exit(1)


# ---------------------------------------------------------------- training side

data_app = typer.Typer(help="Training data: synthesise, audit, pseudo-label.", no_args_is_help=True, rich_markup_mode="markdown")
app.add_typer(data_app, name="data")


def _write_json(path: Path, payload: dict) -> None:
    import json

    from lens.runtime.io import write_atomic

    write_atomic(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


@data_app.command("synth")
def data_synth(
    out: Path = typer.Argument(..., file_okay=False, callback=_output_place, help="Folder to write the pairs into (workload layout).", show_default=False),
    regime: str = typer.Option("workload", help="Parameter regime: workload or general."),
    count: int = typer.Option(100, min=1, help="Number of pairs."),
    seed: int = typer.Option(0, help="Seed: the same seed gives the same files."),
    width: int = typer.Option(2048, min=64, max=16384, help="Image width in pixels."),
    height: int = typer.Option(1366, min=64, max=16384, help="Image height in pixels."),
) -> None:
    """Write held-out synthetic pairs (`<id>_original.jpg` / `<id>_generated.jpg`) with their
    true parameters in `labels.jsonl`, from validation scenes and the held-out photo."""
    _require_torch("data synth")
    from lens.training.pairs import write_synthetic_dataset
    from lens.training.synth import REGIMES

    if regime not in REGIMES:
        raise typer.BadParameter(f"choose one of {', '.join(REGIMES)}", param_hint="--regime")
    with _progress() as progress:
        task = progress.add_task("synth", total=count, rate="")
        write_synthetic_dataset(out, regime, count, seed, width, height, on_pair=lambda: progress.advance(task))
    console.print(f"{count} pairs -> {escape(str(out))}", soft_wrap=True)


@data_app.command("audit")
def data_audit(
    folder: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder of `<id>_original.jpg` / `<id>_generated.jpg` pairs.", show_default=False),
    json_out: Optional[Path] = typer.Option(None, "--json", dir_okay=False, callback=_output_place, help="Also write the report as JSON."),
) -> None:
    """Count pairs and shoots; list image sizes, unmatched, unreadable, size-mismatched and
    near-identical pairs. Exit code 1 if any file is unmatched, unreadable or mismatched."""
    from rich.table import Table

    from lens.training.pairs import audit

    total = len(_pairs_in(folder))
    with _progress() as progress:
        task = progress.add_task("audit", total=total, rate="")
        report = audit(folder, on_pair=lambda: progress.advance(task))
    table = Table(title=f"audit of {escape(str(folder))}")
    table.add_column("check")
    table.add_column("result", justify="right")
    table.add_row("pairs", str(report.pairs))
    table.add_row("shoots", str(report.shoots))
    for size, n in sorted(report.sizes.items(), key=lambda kv: -kv[1]):
        table.add_row(f"size {size}", str(n))
    for name in ("unmatched", "unreadable", "size_mismatch", "near_identical"):
        table.add_row(name.replace("_", " "), str(len(getattr(report, name))))
    console.print(table)
    for name in ("unmatched", "unreadable", "size_mismatch", "near_identical"):
        for item in getattr(report, name)[:20]:
            console.print(f"[yellow]{name}:[/] {escape(str(item))}", soft_wrap=True)
    if json_out:
        _write_json(json_out, report.to_dict())
    if not report.clean:
        raise typer.Exit(1)


def _pairs_in(folder: Path) -> list:
    """The folder's pairs (`lens.training.pairs.find_pairs`); a broken training_metadata.json
    is a usage error naming it."""
    from lens.training.pairs import find_pairs

    try:
        return find_pairs(folder)[0]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="FOLDER") from None


@data_app.command("pseudo-label")
def data_pseudo_label(
    folder: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder of pairs in the workload layout.", show_default=False),
    limit: int = typer.Option(0, min=0, help="Only the first N pairs (0: all)."),
    resume: bool = typer.Option(False, help="Skip pairs that already have a pseudo-label (an interrupted or partial run's)."),
    workers: int = typer.Option(0, min=0, help="Processes fitting pairs side by side (0: one per core this process may use)."),
) -> None:
    """Fit each pair's parametric warp (k1, k2, zoom, centre offset) by coarse-to-fine
    registration and write it with its fit residual (grey levels) into `labels.jsonl`; the
    labels of pairs not fitted this time are kept. Each label is saved as it is made, so an
    interrupted run loses nothing: `--resume` goes on."""
    _require_torch("data pseudo-label")
    import json

    from lens.runtime.cpu_budget import usable_cores
    from lens.runtime.io import write_atomic
    from lens.runtime.run_folder import json_lines
    from lens.training.pairs import GENERATED_SUFFIX, LABELS_FILE, ORIGINAL_SUFFIX, read_labels
    from lens.training.pseudo_label import label_pairs

    every_pair = _pairs_in(folder)
    if not every_pair:  # it wrote an empty labels.jsonl into the folder and said "0 labels made"
        raise typer.BadParameter(f"{folder}: no pairs to label (<id>{ORIGINAL_SUFFIX} beside <id>{GENERATED_SUFFIX})", param_hint="FOLDER")
    pairs = every_pair[:limit] if limit else every_pair
    try:
        labels = read_labels(folder)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="FOLDER") from None
    # ~5 s a pair on 2 cores: a folder of thousands takes a day, so every label is appended
    # here as it is made and merged into labels.jsonl at the end (or by the next --resume)
    progress_file = folder / (LABELS_FILE + ".part")
    saved = {rec["pair_id"]: rec for rec in json_lines(progress_file, "pair_id")} if resume else {}
    if not resume and progress_file.exists():
        console.print(f"[yellow]redoing[/] the labels an interrupted run left in {escape(str(progress_file))} (--resume keeps them)", soft_wrap=True)
    labels.update(saved)
    todo = [p for p in pairs if not (resume and labels.get(p.pair_id, {}).get("source") == "pseudo-label")]
    if len(todo) < len(pairs):
        console.print(f"{len(pairs) - len(todo)} pair(s) already pseudo-labelled (--resume)", soft_wrap=True)
    failed = 0
    with _progress() as progress, open(progress_file, "w") as log:
        log.writelines(json.dumps(r, sort_keys=True) + "\n" for r in saved.values())
        log.flush()
        task = progress.add_task("pseudo-label", total=len(todo), rate="")
        try:
            for record in label_pairs(todo, workers or usable_cores()):
                if "error" in record:
                    failed += 1
                    progress.console.print(f"[red]failed:[/] {escape(record['error'])}", soft_wrap=True)
                else:
                    labels[record["pair_id"]] = record
                    log.write(json.dumps(record, sort_keys=True) + "\n")
                    log.flush()
                progress.advance(task)
        except KeyboardInterrupt:
            progress.stop()
            console.print(f"[yellow]interrupted[/]: the labels made so far are kept in {escape(str(progress_file))}; "
                          "add --resume to the same command to go on", soft_wrap=True)
            raise typer.Exit(130)
    order = {p.pair_id: k for k, p in enumerate(every_pair)}
    merged = sorted(labels.values(), key=lambda r: (order.get(r["pair_id"], len(order)), r["pair_id"]))
    write_atomic(folder / LABELS_FILE, "".join(json.dumps(r, sort_keys=True) + "\n" for r in merged).encode())
    progress_file.unlink()
    console.print(f"{len(todo) - failed} labels made, {len(merged)} in all -> {escape(str(folder / LABELS_FILE))}, {failed} failed", soft_wrap=True)
    if failed:
        raise typer.Exit(1)


@app.command()
def train(
    stage: str = typer.Option(..., help="param | hybrid | finetune (hybrid starts from param's best, finetune from hybrid's)."),
    run_dir: Path = typer.Option(Path("runs/default"), "--run", file_okay=False, callback=_output_place, help="Run folder; each stage writes `<run>/<stage>/{best,last}.pt`."),
    parent: Optional[Path] = typer.Option(None, help="Parent checkpoint (default: `<run>/<parent stage>/best.pt`)."),
    steps: int = typer.Option(2000, min=1),
    batch: int = typer.Option(32, min=2),
    lr: float = typer.Option(1e-3),
    workload_share: float = typer.Option(0.5, min=0.0, max=1.0, help="Share of each batch from the workload regime."),
    pool_size: int = typer.Option(512, min=8, help="Rendered training sources."),
    val_size: int = typer.Option(64, min=8),
    val_every: int = typer.Option(200, min=1),
    backbone: str = typer.Option("small", help="small (CPU), small-hr (with --input-width 480) or resnet (GPU); param stage only."),
    input_width: int = typer.Option(240, min=32, help="Model input width (height 2/3 of it); param stage only."),
    source_width: int = typer.Option(0, min=0, help="Width of the rendered training sources (0: twice the input width)."),
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    workers: int = typer.Option(1, min=1, help="Processes rendering the source pool."),
    minutes: float = typer.Option(0.0, min=0.0, help="Wall-clock budget (0: none); the schedule adapts to it."),
    cuda_graphs: bool = typer.Option(False, help="Replay each step as a CUDA graph (GPU only; see lens/training/captured_step.py)."),
    resume: bool = typer.Option(True, help="Resume from `<run>/<stage>/last.pt` when present."),
    pairs: Optional[Path] = typer.Option(None, exists=True, file_okay=False, help="A folder of labelled pairs (`lens data pseudo-label`): "
                                         "--pairs-share of the steps train on its training split's inputs, supervised by their labels."),
    pairs_share: float = typer.Option(0.5, min=0.0, max=1.0, help="Share of the steps drawn from --pairs."),
    max_fit_residual: float = typer.Option(2.5, min=0.0, help="Leave out --pairs pairs whose pseudo-label fit leaves more mean grey-level difference."),
    val_pairs: int = typer.Option(256, min=1, help="At most this many labelled --pairs pairs of held-out shoots are validated on; "
                                  "where there are any, they pick best.pt."),
) -> None:
    """Train one stage; an interrupted run resumes where it stopped. Ctrl-C or SIGTERM lets the
    step in progress finish and saves the state (exit 130 / 143); the same command carries on,
    with --minutes counting the stage's training time over all its runs."""
    _require_torch("train")

    from lens.training.model import ModelConfig
    from lens.training.train import TrainConfig, TrainingStopped
    from lens.training.train import train as run_training

    try:
        model = ModelConfig(backbone=backbone, input_height=input_width * 2 // 3, input_width=input_width)
        config = TrainConfig(stage=stage, steps=steps, batch=batch, lr=lr, workload_share=workload_share, pool_size=pool_size,
                             source_width=source_width, val_size=val_size, val_every=val_every, seed=seed, device=device,
                             workers=workers, time_budget_s=minutes * 60, cuda_graphs=cuda_graphs, model=model.to_dict(),
                             pairs_dir=str(pairs or ""), pairs_share=pairs_share, max_fit_residual=max_fit_residual, val_pairs=val_pairs)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    with _progress(counts=False) as progress:  # a share: of the steps or of --minutes, whichever is further
        task = progress.add_task(f"train {stage}", total=1000, rate="")
        reported = False

        def on_step(step: int, loss: float, rate: float, done: float) -> None:
            nonlocal reported
            if not reported:  # a resumed stage starts part-way: no jump in the time estimate
                progress.reset(task, total=1000, completed=round(done * 1000))
                reported = True
            progress.update(task, completed=round(done * 1000), rate=f"step {step}  loss {loss:6.3f}  {rate:6.1f} img/s")

        t0 = time.perf_counter()
        try:
            metrics = run_training(config, run_dir, parent=parent, resume=resume, on_step=on_step,
                                   on_pairs=lambda line: progress.console.print(f"pairs: {escape(line)}", soft_wrap=True))
        except TrainingStopped as stopped:
            progress.stop()
            console.print(f"{escape(str(stopped))}; the same command resumes from there", soft_wrap=True)
            raise typer.Exit(128 + stopped.signum) from None
        except ValueError as exc:  # a parent of the wrong stage, a --pairs folder with nothing to train on
            progress.stop()
            console.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(2) from None
    real = (f"; --pairs' held-out shoots {metrics['pairs_epe_mean']:.3f} px (mean), {metrics['pairs_epe_p95']:.3f} px (p95), which picked it"
            if "pairs_epe_mean" in metrics else "")
    console.print(f"{stage}: best validation EPE {metrics.get('epe_mean', float('nan')):.3f} px (mean), "
                  f"{metrics.get('epe_p95', float('nan')):.3f} px (p95){real} in {time.perf_counter() - t0:.0f} s "
                  f"-> {escape(str(run_dir / stage / 'best.pt'))}", soft_wrap=True)


@app.command("eval")
def evaluate_cmd(
    checkpoint: Path = typer.Option(..., exists=True, dir_okay=False, help="A lens checkpoint (.pt)."),
    data: str = typer.Option("synthetic:workload", help="synthetic:workload | synthetic:general | a folder of labelled pairs."),
    count: int = typer.Option(100, min=1, help="Images for synthetic data."),
    json_out: Optional[Path] = typer.Option(None, "--json", dir_okay=False, callback=_output_place, help="Write the summary as JSON."),
    lines: bool = typer.Option(True, help="Also evaluate the network's lens refitted to straight lines (what `lens run` applies)."),
    split: str = typer.Option("val", help="A folder's pairs: val (the shoots its split holds out; the fixed baseline fitted on the others) "
                              "or all (every pair, e.g. a held-out set; the fixed baseline fitted on the same labels, an oracle)."),
) -> None:
    """Endpoint error of the warp (mean, median, p95; pixels at native resolution), SSIM to the
    target and modes chosen, against the identity and the best fixed parameter set."""
    _require_torch("eval")
    if split not in ("val", "all"):
        raise typer.BadParameter("choose val or all", param_hint="--split")
    from rich.table import Table

    from lens.training.batches import synthetic_samples
    from lens.training.checkpoint import load_checkpoint, model_from_checkpoint
    from lens.training.evaluate import best_fixed_params, evaluate, folder_eval_set, training_label_params
    from lens.training.synth import REGIMES

    try:
        ckpt = load_checkpoint(checkpoint)
    except ValueError as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2)
    model = model_from_checkpoint(ckpt)
    if data.startswith("synthetic:"):
        regime = data.split(":", 1)[1]
        if regime not in REGIMES:
            raise typer.BadParameter(f"unknown regime {regime!r}: synthetic:{' or synthetic:'.join(REGIMES)}, or a folder of labelled pairs", param_hint="--data")
        fixed = best_fixed_params(training_label_params(ckpt, regime))
        samples, total = synthetic_samples(regime, count), count
    else:
        try:
            baseline, samples, total = folder_eval_set(data, split)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--data") from None
        fixed = best_fixed_params(baseline)
    with _progress() as progress:
        task = progress.add_task("eval", total=total, rate="")
        summary = evaluate(model, samples, ckpt["stage"] != "param", fixed, on_sample=lambda: progress.advance(task), lines=lines)
    summary.update(checkpoint=str(checkpoint), stage=ckpt["stage"], data=data)
    if not data.startswith("synthetic:"):
        summary["split"] = split
    table = Table(title=f"{escape(data)}{'' if data.startswith('synthetic:') else f' ({split})'}: {summary['images']} images, {escape(ckpt['stage'])} checkpoint")
    for col in ("method", "EPE mean px", "median", "p95", "SSIM"):
        table.add_column(col, justify="right" if col != "method" else "left")
    for name, m in summary["methods"].items():
        table.add_row(name, f"{m['epe_mean']:.3f}", f"{m['epe_median']:.3f}", f"{m['epe_p95']:.3f}", "-" if m["ssim"] is None else f"{m['ssim']:.4f}")
    console.print(table)
    console.print("modes: " + ", ".join(f"{k} {v:.1%}" for k, v in summary["modes"].items()))
    if "line_fit" in summary:
        used = summary["line_fit_used"]
        console.print("line fit: " + ", ".join(f"{k} {v}" for k, v in summary["line_fit"].items())
                      + (f"; EPE where used: mean {used['epe_mean']:.3f} px, max {used['epe_max']:.3f} px" if used["images"] else ""))
    for source, part in summary.get("by_source", {}).items():
        console.print(f"mean EPE on {escape(source)} ({part['images']} image{'s' if part['images'] != 1 else ''}): " + ", ".join(f"{k} {v:.3f}" for k, v in part["epe_mean"].items()))
    if json_out:
        _write_json(json_out, summary)


# ---------------------------------------------------------------- QA side


@app.command()
def score(
    pred: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder of predictions `<id>.jpg`.", show_default=False),
    gt: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder of targets `<id>.jpg` or `<id>_generated.jpg`.", show_default=False),
    inputs: Optional[Path] = typer.Option(None, exists=True, file_okay=False, help="Uncorrected inputs: also report the score relative to them (uncorrected = 0)."),
    csv_out: Optional[Path] = typer.Option(None, "--csv", dir_okay=False, callback=_output_place, help="Per-image scores as CSV."),
    json_out: Optional[Path] = typer.Option(None, "--json", dir_okay=False, callback=_output_place, help="Summary as JSON."),
    workers: int = typer.Option(2, min=1, help="Scoring threads."),
) -> None:
    """Proxy of the workload's per-image score (0..100): edges 40%, line straightness 22%,
    gradient orientation 18%, SSIM 15%, MAE 5%, with hard fails that zero an image."""
    import csv
    import io

    from lens.qa.score import score_folder
    from lens.runtime.io import write_atomic

    n = sum(1 for p in pred.iterdir() if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    with _progress() as progress:
        task = progress.add_task("score", total=n, rate="")
        rows, summary = score_folder(pred, gt, inputs, workers, on_image=lambda: progress.advance(task))
    if csv_out:
        cols = ["id", "score", "relative_score", "uncorrected_score", "edge", "line", "gradient", "ssim", "mae", "hard_fail", "error"]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(csv_out, buf.getvalue().encode("utf-8", "surrogateescape"))  # a non-UTF-8 file name keeps its own bytes
    if json_out:
        _write_json(json_out, summary)
    mean = summary["mean_score"]
    line = f"{summary['images']} images, mean score {mean:.2f}" if mean is not None else "no images"
    if "mean_relative_score" in summary:
        line += f", uncorrected {summary['mean_uncorrected_score']:.2f}, relative {summary['mean_relative_score']:.2f}"
    console.print(line + f", {summary['hard_fails']} hard fail(s)")
    for key, why in (("without_target", f"no target in {gt}"), ("target_unreadable", "its target cannot be read (see the CSV)")):
        ids = summary[key]
        if ids:
            console.print(f"[yellow]not scored, {escape(why)}:[/] {len(ids)} prediction(s) "
                          f"({escape(', '.join(ids[:5]))}{' ...' if len(ids) > 5 else ''})", soft_wrap=True)
    if not summary["images"]:  # a wrong folder, or no prediction with a readable target
        console.print(f"[red]error:[/] nothing scored: no prediction in {escape(str(pred))} has a readable target in {escape(str(gt))}", soft_wrap=True)
        raise typer.Exit(1)


def _qa_report(pred: Path, inputs: Path, ids: Optional[Path], require_metadata: bool):
    from lens.qa.gates import run_gates
    from lens.qa.ids import read_ids

    if ids is not None:
        try:
            read_ids(ids)  # before any work: a list that cannot be read is the caller's to fix
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--ids") from None
    n = sum(1 for p in pred.iterdir() if p.is_file())
    with _progress() as progress:
        task = progress.add_task("qa", total=n, rate="")
        report = run_gates(pred, inputs, ids, require_metadata=require_metadata, on_file=lambda: progress.advance(task))
    for f in report.failures():
        console.print(f"[red]{escape(f['gate'])}:[/] {escape(f['file'])}: {escape(f['reason'])}", soft_wrap=True)
    for gate in report.gates:
        if gate.note:
            console.print(f"{escape(gate.name)}: {escape(gate.note)}", soft_wrap=True)
    console.print(("[green]QA passed[/]" if report.passed else f"[red]QA failed[/]: {len(report.failures())} problem(s)") + f" ({report.checked_files} checked)")
    return report


@app.command()
def qa(
    pred: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder of predictions `<id>.jpg`.", show_default=False),
    inputs: Path = typer.Option(..., exists=True, file_okay=False, help="Folder of the inputs (`<id>.jpg` or `<id>_original.jpg`)."),
    ids: Optional[Path] = typer.Option(None, exists=True, dir_okay=False, help="File with the exact expected ids, one per line (default: the inputs' ids)."),
    report: Optional[Path] = typer.Option(None, dir_okay=False, callback=_output_place, help="Write an HTML report (failures, before/after thumbnails)."),
    json_out: Path = typer.Option(Path("qa.json"), "--json", dir_okay=False, callback=_output_place, help="Where to write the gate results."),
    require_metadata: bool = typer.Option(True, help="Require `lens run` metadata beside the images."),
) -> None:
    """Gate a folder of predictions: exact id set, decodes, same size as input, changed,
    no black or constant border that its input lacks, no catastrophic regional difference, run
    metadata with no hard-unsafe image. Exit code 0 only when every gate passes."""
    result = _qa_report(pred, inputs, ids, require_metadata)
    _write_json(json_out, result.to_dict())
    if report:
        from lens.qa.report import render_html
        from lens.runtime.io import write_atomic

        write_atomic(report, render_html(result, pred).encode("utf-8", "backslashreplace"))  # a non-UTF-8 file name shows as \udcXX, as on the console
        console.print(f"report -> {escape(str(report))}", soft_wrap=True)
    if not result.passed:
        raise typer.Exit(1)


@app.command()
def package(
    pred: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder of predictions `<id>.jpg`.", show_default=False),
    out: Path = typer.Option(..., callback=_output_place, help="The zip to write, e.g. submission.zip."),
    inputs: Path = typer.Option(..., exists=True, file_okay=False, help="Folder of the inputs, for QA."),
    ids: Optional[Path] = typer.Option(None, exists=True, dir_okay=False, help="Exact expected ids, one per line."),
    strict: bool = typer.Option(False, help="Also require `lens run` metadata with no hard-unsafe image."),
    force: bool = typer.Option(False, help="Package even when QA fails (recorded in the manifest)."),
) -> None:
    """Run QA, then write a byte-reproducible flat zip of `<id>.jpg` (stored, sorted, fixed
    timestamps and permissions), re-read and verify it, and write `<zip>.manifest.json`."""
    from lens.qa.package import PackageError
    from lens.qa.package import package as build_package

    if out.is_dir():
        raise typer.BadParameter(f"{out} is a folder; name the zip to write, e.g. --out {out / 'submission.zip'}", param_hint="--out")
    if out.resolve().parent == pred.resolve():
        # the zip and its manifest would be read as badly named predictions by the next QA
        raise typer.BadParameter(f"{out} is inside the predictions folder {pred}, which must hold the <id>.jpg files only; "
                                 f"write it beside it, e.g. --out {pred.resolve().parent / out.name}", param_hint="--out")
    result = _qa_report(pred, inputs, ids, require_metadata=strict)
    _write_json(out.with_name(out.name + ".qa.json"), result.to_dict())
    try:
        done = build_package(pred, out, result, force=force)
    except PackageError as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(1)
    console.print(f"{done.entries} entries -> {escape(str(done.zip_path))} (sha256 {done.sha256[:16]}…), manifest {escape(str(done.manifest_path))}"
                  + (" [yellow](forced past failed QA)[/]" if force and not result.passed else ""), soft_wrap=True)


# ---------------------------------------------------------------- export side


@app.command("export")
def export_cmd(
    checkpoint: Path = typer.Option(..., exists=True, dir_okay=False, help="A lens checkpoint (.pt)."),
    out: Path = typer.Option(..., callback=_output_place, help="Build folder for the ONNX graphs, engines and manifest.json."),
    precision: str = typer.Option("fp32", help="fp32, or fp16 (network layers in fp16; grid and GridSample stay fp32)."),
    min_shape: str = typer.Option("1x3x256x256", help="TensorRT profile minimum, BxCxHxW."),
    opt_shape: str = typer.Option("4x3x1367x2048", help="TensorRT profile optimum, BxCxHxW."),
    max_shape: str = typer.Option("8x3x3000x4000", help="TensorRT profile maximum, BxCxHxW."),
    engine: bool = typer.Option(True, help="Build a TensorRT engine where TensorRT and a GPU exist."),
    workspace_gib: float = typer.Option(4.0, min=0.1, help="TensorRT builder workspace limit."),
    version_compatible: bool = typer.Option(False, help="Build a version-compatible engine (runs on later TensorRT)."),
    hardware_compatible: bool = typer.Option(False, help="Build for every Ampere-or-newer GPU."),
) -> None:
    """Export a checkpoint to one ONNX graph (model, grid fusion, safety, fallback and
    GridSample) plus its CPU variant (sampling maps for OpenCV; stored cut in two, network and
    warp, so that `lens run` can skip the warp where the line fit replaces it), check both
    (onnx.checker, symbolic shapes, ONNX Runtime at two sizes, TensorRT lint; the halves against
    the whole, bit for bit), build a TensorRT engine where possible, and write manifest.json."""
    _require_torch("export")
    from lens.export.build import ExportCheckFailed, export
    from lens.export.tensorrt_build import ShapeProfile
    from lens.training.checkpoint import CheckpointError

    try:
        profile = ShapeProfile(ShapeProfile.parse(min_shape), ShapeProfile.parse(opt_shape), ShapeProfile.parse(max_shape))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if precision not in ("fp32", "fp16"):
        raise typer.BadParameter("choose fp32 or fp16", param_hint="--precision")
    if out.exists() and not out.is_dir():  # it stopped on a FileExistsError traceback after loading the checkpoint
        raise typer.BadParameter(f"{out} is a file: name a folder for the build (its graphs, engines and manifest.json)", param_hint="--out")
    with console.status("exporting and checking (a minute or two per graph)..."):
        try:
            result = export(checkpoint, out, precision, profile, engine, workspace_gib, version_compatible, hardware_compatible)
        except ExportCheckFailed as exc:
            console.print(f"[red]export check failed:[/] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(1)
        except CheckpointError as exc:
            console.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(2)
    for item in result.manifest["onnx"]:
        checked = "onnx.checker, symbolic B/H/W, onnxruntime at 2 sizes, TensorRT lint" + ("; the halves equal the whole CPU graph" if item["variant"].startswith("lattice_") else "")
        console.print(f"{escape(item['file'])}  sha256 {item['sha256'][:16]}…  (checked: {checked})", soft_wrap=True)
    for item in result.manifest["engines"]:
        console.print(f"{escape(item['file'])}  TensorRT {item['tensorrt']} on {escape(item['gpu'])}", soft_wrap=True)
    if result.engine_note:
        console.print(f"[yellow]{escape(result.engine_note)}[/]", soft_wrap=True)
    console.print(f"manifest -> {escape(str(out / 'manifest.json'))}", soft_wrap=True)


@app.command()
def parity(
    build: Path = typer.Option(..., exists=True, file_okay=False, help="A `lens export` build folder."),
    images: Path = typer.Option(..., exists=True, file_okay=False, help="Folder of images to run through every backend."),
    backends: str = typer.Option("torch,onnxruntime", help="Comma-separated; the first is the reference (torch, onnxruntime, tensorrt)."),
    checkpoint: Optional[Path] = typer.Option(None, exists=True, dir_okay=False, help="Checkpoint for the torch backend (default: the manifest's)."),
    json_out: Path = typer.Option(Path("parity.json"), "--json", dir_okay=False, callback=_output_place, help="Where to write the report."),
) -> None:
    """Compare parameters, grids (pixels), output images and chosen modes across backends;
    exit code 1 when any tolerance fails or a requested backend is unavailable."""
    from rich.table import Table

    from lens.export.parity import run_parity
    from lens.runtime.io import list_images

    names = [b.strip() for b in backends.split(",") if b.strip()]
    with _progress() as progress:
        task = progress.add_task("parity", total=len(list_images(images)), rate="")
        try:
            report = run_parity(build, images, names, checkpoint, on_image=lambda: progress.advance(task))
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    table = Table(title=f"parity vs {report['reference']} ({report['precision']})")
    for col in ("backend", "image", "size", "params rel", "grid px", "max levels", ">1 level", "modes", "result"):
        table.add_column(col)
    for r in report["rows"]:
        table.add_row(r["backend"], escape(r["image"]), r["size"], f"{r['params_rel']:.2e}", f"{r['grid_px']:.2e}", str(r["image_max_levels"]),
                      f"{r['image_share_over_1']:.4%}", "same" if r["modes_equal"] else "DIFFER", "[green]ok[/]" if not r["failures"] else "[red]" + escape("; ".join(r["failures"])) + "[/]")
    console.print(table)
    for b, why in report["unavailable"].items():
        console.print(f"[red]{escape(b)} unavailable:[/] {escape(why)}", soft_wrap=True)
    for item in report["unreadable"]:  # in the JSON only until now: a folder of them passed unseen
        console.print(f"[yellow]not compared:[/] {escape(item['file'])}: {escape(item['reason'])}", soft_wrap=True)
    _write_json(json_out, report)
    if not report["passed"]:
        raise typer.Exit(1)
