"""Undistort photographs with known lens coefficients (`lens undistort`).

The grid comes from `lens.geometry` (torch), the sampling from OpenCV's ``remap``
(`lens.runtime.sampling`): the same two pieces the runtime's CPU path uses.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lens.runtime.io import DISK_FULL, IMAGE_SUFFIXES, ImageReadError, claim_names, list_images, read_image, write_image
from lens.runtime.sampling import warp_with_grid


@dataclass(frozen=True)
class LensSpec:
    """Coefficients plus optional pixel intrinsics; omitted intrinsics take the per-image
    defaults (f = image width, principal point at the image centre)."""

    k1: float = 0.0
    k2: float = 0.0
    k3: float = 0.0
    p1: float = 0.0
    p2: float = 0.0
    focal_px: float | None = None
    cx_px: float | None = None
    cy_px: float | None = None


@dataclass(frozen=True)
class OutputCamera:
    """How the output is framed: ``zoom`` (focal multiplier) if given, else OpenCV's
    ``alpha`` (0 = crop to valid pixels, no black border; 1 = keep every input pixel)."""

    alpha: float = 0.0
    zoom: float | None = None

    def __post_init__(self) -> None:
        if self.zoom is not None and self.zoom <= 0:
            raise ValueError(f"zoom must be positive, got {self.zoom}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be within [0, 1], got {self.alpha}")


@dataclass
class FileResult:
    source: Path
    output: Path | None = None
    error: str | None = None
    size: tuple[int, int] | None = None  # (width, height)


def undistortion_grid(spec: LensSpec, camera: OutputCamera, width: int, height: int) -> np.ndarray:
    """``(H, W, 2)`` float32 normalised backward grid for one image size."""
    import torch

    from lens.geometry import LensParams, optimal_new_camera, parametric_grid, zoom_camera

    params = LensParams.from_pixels(
        width, height, k1=spec.k1, k2=spec.k2, k3=spec.k3, p1=spec.p1, p2=spec.p2,
        focal_px=spec.focal_px, cx_px=spec.cx_px, cy_px=spec.cy_px,
    ).to_tensor()
    with torch.no_grad():
        if camera.zoom is not None:
            new_cam = zoom_camera(params, height, width, camera.zoom)
        else:
            # float64: the border search is cheap and this makes alpha = 0 exact to 1e-9 px.
            new_cam = optimal_new_camera(params.double(), height, width, camera.alpha).float()
        grid = parametric_grid(params, new_cam, height, width)
    return grid[0].numpy()


def output_path_for(source: Path, out_dir: Path) -> Path:
    """Same name; a suffix other than .jpg/.jpeg/.png becomes .jpg (written as JPEG)."""
    if source.suffix.lower() in (".jpg", ".jpeg", ".png"):
        return out_dir / source.name
    return out_dir / (source.stem + ".jpg")


def plan_outputs(src: Path, dst: Path) -> list[tuple[Path, Path]]:
    """(input, output) pairs for a file or a folder ``src``.

    A folder writes into folder ``dst``; a file writes to ``dst`` when ``dst`` has an image
    suffix (ValueError unless .jpg, .jpeg or .png), else into folder ``dst`` under the input's
    name."""
    if src.is_dir():
        return [(p, output_path_for(p, dst)) for p in list_images(src)]
    if dst.suffix.lower() in IMAGE_SUFFIXES and not dst.is_dir():
        if dst.suffix.lower() not in (".jpg", ".jpeg", ".png"):  # its bytes would be a JPEG's under another format's name
            raise ValueError(f"{dst}: outputs are written as JPEG or PNG; name it .jpg, .jpeg or .png")
        return [(src, dst)]
    return [(src, output_path_for(src, dst))]


def undistort_files(
    pairs: Iterable[tuple[Path, Path]],
    spec: LensSpec,
    camera: OutputCamera = OutputCamera(),
    quality: int = 95,
    on_done: Callable[[FileResult], None] | None = None,
) -> list[FileResult]:
    """Undistort each (input, output) pair; a file that fails is reported, not fatal. Of
    inputs with one output ("a.tif" and "a.jpg" -> "a.jpg"), the one already so named is
    written, else the first; the others fail (one would overwrite the other)."""
    pairs = list(pairs)
    holder, _ = claim_names([(source, str(output)) for source, output in pairs])
    grids: dict[tuple[int, int], np.ndarray] = {}  # one grid per image size
    results = []
    for source, output in pairs:
        result = FileResult(source)
        if holder[str(output)] != source:
            result.error = f"output name {output.name} already taken by {holder[str(output)].name}"
            results.append(result)
            if on_done:
                on_done(result)
            continue
        try:
            image = read_image(source)
            key = (image.width, image.height)
            if key not in grids:
                grids[key] = undistortion_grid(spec, camera, *key)
            image.pixels = warp_with_grid(image.pixels, grids[key])
            write_image(output, image, quality=quality)
            result.output, result.size = output, key
        except ImageReadError as exc:
            result.error = exc.reason
        except OSError as exc:
            result.error = f"cannot write {output}: {exc.strerror or exc}"
            if exc.errno in DISK_FULL:  # every later file would fail the same way: stop (the CLI says so in a line)
                results.append(result)
                if on_done:
                    on_done(result)
                raise
        results.append(result)
        if on_done:
            on_done(result)
    return results
