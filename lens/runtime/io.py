"""Reading and writing photographs: every failure is named, every write is atomic.

Decoding uses Pillow (it reads EXIF, ICC profiles and every mode a camera or editor produces);
pixels are handled in their stored orientation. Lens distortion lives in the sensor's frame,
so an EXIF-rotated file is corrected as stored and its EXIF block, orientation tag included,
is copied to the output: viewers then show the corrected image the same way up as the input.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

#: Extensions read as images when a folder is given.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
#: Refuse images above this many pixels (a decompression bomb expands a small file into
#: gigabytes); 150 MP is above any current camera's output.
MAX_PIXELS = 150_000_000
JPEG_QUALITY = 95


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; outputs get the permissions a plain open() would give them.
_FILE_MODE = 0o666 & ~_current_umask()


class ImageReadError(Exception):
    """A file that cannot be used as an input image; ``str()`` names the file and the reason."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass
class DecodedImage:
    """Pixels ``(H, W, C)`` uint8 with C in {1, 3, 4}, plus what the writer carries over."""

    pixels: np.ndarray
    exif: bytes | None = None
    icc_profile: bytes | None = None

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    @property
    def width(self) -> int:
        return self.pixels.shape[1]


def _to_uint8_array(img: Image.Image) -> np.ndarray:
    """Normalise Pillow's many modes to 8-bit L, RGB or RGBA pixels."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits instead of Pillow's clipping conversion.
        wide = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or wide.max() > 255 else 255.0
        return np.clip(np.rint(wide * (255.0 / top)), 0, 255).astype(np.uint8)[..., None]
    if mode == "F":
        raise ValueError("floating-point images are not supported")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
    elif mode not in ("L", "RGB", "RGBA"):
        img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, 1-bit
    arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def read_image(path: str | os.PathLike) -> DecodedImage:
    """Decode ``path`` or raise `ImageReadError` saying why not."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageReadError(path, f"cannot open: {exc.strerror or exc}") from None
    if size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise ImageReadError(path, f"image too large: {w}x{h} exceeds {MAX_PIXELS:,} pixels")
                if w < 2 or h < 2:
                    raise ImageReadError(path, f"image too small to warp: {w}x{h}")
                img.load()
                pixels = _to_uint8_array(img)
                exif = img.info.get("exif")
                icc = img.info.get("icc_profile")
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(path, "not a readable image (unknown or corrupt format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(path, f"image too large (decompression bomb guard): {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageReadError(path, f"corrupt or truncated image: {exc}") from None
    return DecodedImage(np.ascontiguousarray(pixels), exif=exif, icc_profile=icc)


def output_format(path: Path) -> str:
    """"PNG" for a .png name, else "JPEG"."""
    return "PNG" if path.suffix.lower() == ".png" else "JPEG"


def encode_image(image: DecodedImage, fmt: str, quality: int = JPEG_QUALITY) -> bytes:
    """Deterministic encoding: JPEG at ``quality`` with 4:4:4 chroma, or PNG.

    JPEG has no alpha channel: RGBA is flattened to RGB there (the alpha is dropped)."""
    import io

    pixels = image.pixels
    channels = pixels.shape[2]
    if fmt == "JPEG" and channels == 4:
        pixels = pixels[..., :3]
        channels = 3
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
    img = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode=mode)
    options: dict = {}
    if image.exif:
        options["exif"] = image.exif
    if image.icc_profile:
        options["icc_profile"] = image.icc_profile
    if fmt == "JPEG":
        options.update(quality=quality, subsampling=0, optimize=False)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is either absent, its old content, or the
    complete new content, even if the process is killed: temp file in the same folder,
    fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_image(path: str | os.PathLike, image: DecodedImage, quality: int = JPEG_QUALITY) -> None:
    """Encode by the name's suffix (`output_format`) and write atomically."""
    path = Path(path)
    write_atomic(path, encode_image(image, output_format(path), quality))


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (deterministic order)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
