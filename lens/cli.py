"""The `lens` command line: each command is a thin layer over a library call.

Typer turns typed function signatures into the CLI and its help; Rich draws the progress bars
and tables. Heavy imports (torch, onnxruntime) happen inside the commands so that
``lens --help`` is instant and each command needs only its own dependencies.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lens import __version__

app = typer.Typer(
    name="lens",
    help="Automatic lens-distortion correction: predict, export, run, check and package.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
)
console = Console(stderr=True)


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

    problem = conflict_message()
    if problem:
        console.print(f"[red]error:[/] {escape(problem)}", soft_wrap=True)
        raise typer.Exit(2)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _require_torch(command: str) -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        console.print(f"[red]error:[/] `lens {command}` builds its warp with torch, which is not installed.\n"
                      "Install it with:  pip install torch   (or the project's [train] extra)")
        raise typer.Exit(2)


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

    spec = LensSpec(k1, k2, k3, p1, p2, focal, cx, cy)
    try:
        camera = OutputCamera(alpha=alpha, zoom=zoom)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    pairs = plan_outputs(src, dst)
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
