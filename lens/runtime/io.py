"""Reading and writing photographs: every failure is named, every write is atomic.

Pillow reads every file's header, EXIF and ICC profile and decodes every mode a camera or
editor produces (HEIC / HEIF through pillow-heif, the ``heif`` extra, registered on the first
such file). The common case, an 8-bit RGB or greyscale JPEG/PNG, is decoded by libjpeg-turbo
through simplejpeg (JPEG: a file with damaged data is refused, `_decode_jpeg`) or OpenCV (PNG)
instead, and JPEGs are encoded by OpenCV (libjpeg-turbo without Pillow's copies: ~20 vs ~30 ms
each way for a 2048 px photo), with EXIF and ICC spliced back into the JPEG. Pixels are
handled in their stored orientation. Lens distortion lives in the sensor's frame, so an
EXIF-rotated file is corrected as stored and its EXIF block, orientation tag included,
is copied to the output: viewers then show the corrected image the same way up as the input.
"""
from __future__ import annotations

import errno
import functools
import os
import re
import stat
import struct
import tempfile
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from lens.conventions import WORKLOAD_INPUT_SUFFIX, WORKLOAD_TARGET_SUFFIX
from lens.runtime.container_checks import PNG_SIGNATURE, named_by_signature, png_problem, webp_problem

#: Extensions read as images when a folder is given (HEIC / HEIF with the ``heif`` extra).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".heic", ".heif")
# ISO-BMFF major brands of HEIF stills (a phone's HEIC, whatever its name says)
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")
HEIF_EXTRA_HINT = "a HEIC/HEIF photo needs the heif extra: pip install 'lens[heif]' (from a clone: pip install '.[heif]')"
#: Refuse images above this many pixels (a decompression bomb expands a small file into
#: gigabytes); 150 MP is above all but the largest medium-format backs.
MAX_PIXELS = 150_000_000
# Pillow's own guard warns from 89.5 MP, which read_image turns into a refusal: a 100 MP
# medium-format photo (Fujifilm GFX100, Hasselblad X2D) was refused as a bomb. One limit.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
JPEG_QUALITY = 95
# Pillow's names for a JPEG: "MPO" is one with more images after the main one (Multi-Picture
# Format: phones' Ultra HDR gain maps, depth maps, previews), which decoders read as its first
JPEG_FORMATS = ("JPEG", "MPO")


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

    pixels: np.ndarray | None
    exif: bytes | None = None
    icc_profile: bytes | None = None
    # A JPEG's XMP (APP1) and IPTC (APP13) marker segments, whole: keywords, copyright, ratings
    segments: tuple[bytes, ...] = ()
    # For a GPU decoder (`lens.runtime.gpu_jpeg`): the file's bytes and (H, W), pixels None.
    encoded: bytes | None = None
    encoded_size: tuple[int, int] | None = None
    # (H, W) as stored, where `read_image`'s ``draft`` decoded the pixels smaller
    stored_size: tuple[int, int] | None = None
    # what reading changed that the output cannot keep ("icc_dropped")
    notes: tuple[str, ...] = ()
    # what the decoder said of a file it decoded all the same: libjpeg's "N extraneous bytes
    # before marker 0xd9", which a camera's padding gives (DJI drones') and so does damage that
    # garbled the pixels (`_JPEG_DAMAGE`)
    warnings: tuple[str, ...] = ()
    # For a GPU decoder: `check_jpeg_data` of ``encoded`` (and its time in ms), run on a host
    # thread while the photo waits for its batch. nvJPEG decodes damaged data without a word
    # (grey or garbled blocks), so the output is written only once this has passed.
    data_check: Future | None = None

    @property
    def height(self) -> int:
        return self.pixels.shape[0] if self.pixels is not None else self.encoded_size[0]

    @property
    def width(self) -> int:
        return self.pixels.shape[1] if self.pixels is not None else self.encoded_size[1]


def _is_heif(head: bytes) -> bool:
    return head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS


@functools.cache
def _heif_problem() -> str | None:
    """Teach Pillow HEIF (pillow-heif: libheif, which phones' HEIC photos need and Pillow does
    not bundle); None, or why it cannot. libheif applies the file's rotation and mirroring as it
    decodes and pillow-heif sets the EXIF orientation to 1 to match, so a HEIC photo is corrected
    upright and its output needs no orientation tag."""
    try:
        import pillow_heif
    except ImportError:
        return HEIF_EXTRA_HINT
    pillow_heif.register_heif_opener()
    return None


# Pillow's greyscale modes of more than 8 bits (16-bit PNG and TIFF, 32-bit integer)
_WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I")


def _mpf_images(img: Image.Image) -> int:
    """How many images a JPEG's Multi-Picture Format segment lists (0 without one). Pillow opens
    an Ultra HDR photo, gain map listed there, as a one-frame JPEG (it does not read gain maps
    yet), so its frame count alone missed the gain map."""
    try:
        mp = img._getmp() if hasattr(img, "_getmp") else None  # Pillow's MPF reader (MPO and JPEG files)
    except Exception:  # a damaged MPF segment: the image itself still reads
        return 0
    return int(mp.get(0xB001, 0)) if mp else 0


def _reading_notes(img: Image.Image) -> tuple[str, ...]:
    """What of an opened file the output will not hold: ``frames_dropped`` where it has more
    than one image (the pages of a TIFF, the frames of a WebP, the gain map, depth map or
    preview a phone's JPEG carries: only the first, main one is corrected), ``depth_reduced``
    where its samples have more than 8 bits (read before decoding: Pillow's tile says how
    they are stored)."""
    notes = ()
    if getattr(img, "n_frames", 1) > 1 or _mpf_images(img) > 1:
        notes += ("frames_dropped",)
    raw = img.tile[0][3] if img.tile else None
    raw = raw[0] if isinstance(raw, tuple) and raw else raw
    if img.mode in _WIDE_GREY_MODES or (isinstance(raw, str) and (";16" in raw or ";32" in raw)):
        notes += ("depth_reduced",)
    return notes


class UnsupportedPixels(ValueError):
    """Samples with no 8-bit photo reading (floating point, 32-bit integers beyond 16 bits)."""


def _to_uint8_array(img: Image.Image) -> np.ndarray:
    """Normalise Pillow's many modes to 8-bit L, RGB or RGBA pixels."""
    mode = img.mode
    if mode in _WIDE_GREY_MODES:
        # 16-bit greyscale: scale to 8 bits instead of Pillow's clipping conversion.
        wide = np.asarray(img, dtype=np.float64)
        if wide.size and (wide.min() < 0 or wide.max() > 65535):
            # a 32-bit scientific TIFF: scaled as 16 bits it came out white, and passed as corrected
            raise UnsupportedPixels(f"32-bit integer samples outside 0..65535 ({wide.min():.0f}..{wide.max():.0f}) are not supported")
        top = 65535.0 if mode.startswith("I;16") or wide.max() > 255 else 255.0
        return np.clip(np.rint(wide * (255.0 / top)), 0, 255).astype(np.uint8)[..., None]
    if mode == "F":
        raise UnsupportedPixels("floating-point samples are not supported")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
    elif mode not in ("L", "RGB", "RGBA"):
        img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, 1-bit
    arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def _icc_of_pixels(icc: bytes | None, channels: int) -> tuple[bytes | None, tuple[str, ...]]:
    """The ICC profile if its colour space (header bytes 16-20) is the pixels' as written,
    RGB or grey, else None with the note ``icc_dropped``. A CMYK or Lab photo's profile does
    not describe its conversion to RGB, and colour-managed viewers would apply it to RGB values."""
    if not icc or len(icc) < 20 or icc[16:20] == (b"GRAY" if channels == 1 else b"RGB "):
        return icc, ()
    return None, ("icc_dropped",)


# libjpeg's warnings (jerror.h) that mean the pixels are not the photo's: the compressed data
# broke or ended before the last block, and libjpeg filled the rest with grey (or garbage
# after a bad code) and returned the image as if whole. Its other warnings decode: "N
# extraneous bytes before marker" is what DJI drones' photos (real-estate aerials), some
# scanners and IP cameras give, whole and shown by every viewer; a bad ICC marker or an unknown
# JFIF version leave the pixels whole too. A byte flipped inside the data can end a scan
# early with that same warning and garbled pixels: the price of not refusing those photos,
# whose records say what libjpeg said (`DecodedImage.warnings`) and which the console lists.
# (Of 40 JPEGs fuzzed by flipped or lost bytes, 24 decoded: 10 with this warning, all of them
# garbled, and 14 without any, 9 of them changed too, as one bad code can shift the colour of
# every later block: no decoder can tell those, JPEG has no checksum.)
_JPEG_DAMAGE = ("premature end of data segment", "bad huffman code", "bad arithmetic code", "instead of rst")


class DamagedJpeg(ValueError):
    """A JPEG whose compressed data is damaged: part of its image would be grey or garbage."""


def _decode_jpeg(data: bytes, colorspace: str, at_least: tuple[int, int] | None = None) -> tuple[np.ndarray | None, str | None]:
    """A JPEG's pixels in ``colorspace`` (simplejpeg's: RGB, GRAY, CMYK) by libjpeg-turbo
    through simplejpeg, which says when the data is damaged or cut short, where OpenCV's
    decoder prints libjpeg's warning to stderr, unattributed, and returns the grey rows
    (Pillow's says nothing). The same pixels as OpenCV's, in 0.74x its time (the CPU bench's
    48 photos at 2048 x 1367, 5 interleaved rounds). Of 60 fuzzed copies of the sample photos
    (bytes flipped, cut or spliced out), OpenCV decoded 25 without an error, 21 of them
    damaged. Raises `DamagedJpeg`. Returns the pixels (None where TurboJPEG refuses the
    header: OpenCV decodes those as before) and libjpeg's warning where it decoded with a
    harmless-looking one (`_JPEG_DAMAGE`), else None. ``at_least`` (W, H): decoded at the
    smallest of libjpeg's DCT scales (1/8 to 1) that keeps both sides at least that large,
    for thumbnails."""
    import simplejpeg  # here: a training run on a machine without it never decodes a JPEG

    size = {"min_width": at_least[0], "min_height": at_least[1]} if at_least else {}
    try:
        return simplejpeg.decode_jpeg(data, colorspace, strict=True, **size), None
    except ValueError as exc:
        text = " ".join(str(exc).split())
        said = text[:1].lower() + text[1:]
        if text.lower().startswith("premature end of jpeg file"):
            raise DamagedJpeg(f"truncated JPEG: {said} (libjpeg): the end of the image is missing") from None
        if any(d in text.lower() for d in _JPEG_DAMAGE):
            raise DamagedJpeg(f"{said} (libjpeg): part of the image would come out grey or garbled") from None
    try:
        return simplejpeg.decode_jpeg(data, colorspace, strict=False, **size), f"{said} (libjpeg)"
    except ValueError:  # refused while reading the header (stray bytes there, unusual sampling factors)
        return None, None


def check_jpeg_data(data: bytes) -> str | None:
    """The damage checks of a full decode (`_decode_jpeg`) for a JPEG another decoder will
    decode: its luma decoded at 1/8 scale, which reads all of its compressed data (~6 ms for a
    2048 x 1367 photo against ~12 ms for a full decode, on one core; libjpeg-turbo releases
    the GIL). Raises `DamagedJpeg` with the reason a full decode would give; returns libjpeg's
    harmless-looking warning, else None (also where TurboJPEG refuses the header, which the
    CPU path leaves to OpenCV unchecked)."""
    return _decode_jpeg(data, "GRAY", (1, 1))[1]


def _fast_decode(path: Path, fmt: str | None, mode: str, data: np.ndarray | None = None) -> tuple[np.ndarray | None, str | None]:
    """libjpeg-turbo / OpenCV decode of 8-bit RGB / L JPEG and PNG: the pixels, None where
    Pillow must decode, and libjpeg's warning where it gave one (`_decode_jpeg`). A JPEG whose
    data is damaged or cut short raises `DamagedJpeg`; data after its end marker (a phone's
    Motion Photo video) is not read. A CMYK JPEG is checked the same way, then left to Pillow
    (which reads Adobe's inverted CMYK and converts it), so it costs a second decode: CMYK
    JPEGs come from print workflows, not cameras. A PNG's chunks have been checked
    (`png_problem`). ``data``: the file's bytes, where already read."""
    if fmt in JPEG_FORMATS and mode == "CMYK":
        return None, _decode_jpeg(np.fromfile(path, dtype=np.uint8), "CMYK")[1]
    if fmt not in (*JPEG_FORMATS, "PNG") or mode not in ("RGB", "L"):
        return None, None
    data = np.fromfile(path, dtype=np.uint8) if data is None else data
    if fmt in JPEG_FORMATS:
        pixels, warning = _decode_jpeg(data, "GRAY" if mode == "L" else "RGB")
        if pixels is not None:
            return pixels, warning
    # OpenCV >= 4.10 decodes straight to RGB: the same bytes as BGR + cvtColor, ~2-3 ms less
    # for a 2048 px photo
    rgb_flag = getattr(cv2, "IMREAD_COLOR_RGB", None)
    flags = cv2.IMREAD_IGNORE_ORIENTATION | (cv2.IMREAD_GRAYSCALE if mode == "L" else rgb_flag or cv2.IMREAD_COLOR)
    pixels = cv2.imdecode(data, flags)
    if pixels is None:
        return None, None
    if pixels.ndim == 2:
        return pixels[..., None], None
    return (pixels if rgb_flag is not None else cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)), None


_NOT_FILES = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
              (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"))


def _link_note(path: Path) -> str:
    """" (a link to TARGET)" for a symbolic link, else "": said only when reading fails."""
    return f" (a link to {os.readlink(path)})" if path.is_symlink() else ""


def read_image(path: str | os.PathLike, keep_jpeg: bool = False, draft: tuple[int, int] | None = None) -> DecodedImage:
    """Decode ``path`` or raise `ImageReadError` saying why not. With ``keep_jpeg``, a file
    that `lens.runtime.gpu_jpeg.device_decodable` accepts is checked but not decoded: the
    result holds its bytes (``encoded``) for the GPU decoder. With ``draft`` (W, H), for
    thumbnails, a JPEG is decoded greyscale (its luma) at the smallest scale (1/8 to 1,
    libjpeg's DCT scaling) no smaller than that: ~6 against 17-19 ms for a 2048 px photo at
    1/8 (simplejpeg: the same pixels as Pillow's draft, 0.9x its time); other formats in full.
    The checks are the same, damaged JPEG data included."""
    path = Path(path)
    try:
        info = path.stat()
    except OSError as exc:
        raise ImageReadError(path, f"cannot open: {exc.strerror or exc}{_link_note(path)}") from None
    if not stat.S_ISREG(info.st_mode):  # a link to /dev/zero read as an "empty file"; a named pipe would block the read
        kind = next((name for test, name in _NOT_FILES if test(info.st_mode)), "a special file")
        raise ImageReadError(path, f"not a file but {kind}{_link_note(path)}")
    size = info.st_size
    if size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    data = None  # a PNG's bytes, read for its checks
    try:
        with open(path, "rb") as f:
            head = f.read(12)
        if _is_heif(head) and (problem := _heif_problem()):
            raise ImageReadError(path, problem)
        if head.startswith(PNG_SIGNATURE):
            data = np.fromfile(path, dtype=np.uint8)
            problem = png_problem(data)
        else:
            problem = webp_problem(head, size)
        if problem:
            raise ImageReadError(path, problem)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise ImageReadError(path, f"image too large: {w}x{h} exceeds {MAX_PIXELS:,} pixels")
                if w < 2 or h < 2:
                    raise ImageReadError(path, f"image too small to warp: {w}x{h}")
                exif = without_thumbnail(img.info.get("exif"))
                icc = img.info.get("icc_profile")
                segments, xmp_notes = _kept_segments(img)
                notes = _reading_notes(img) + xmp_notes
                if keep_jpeg:
                    from lens.runtime.gpu_jpeg import device_decodable

                    if device_decodable(path, img.format, img.mode):
                        data = path.read_bytes()
                        if data[-2:] == b"\xff\xd9":
                            kept_icc, dropped = _icc_of_pixels(icc, 3)
                            return DecodedImage(None, exif=exif, icc_profile=kept_icc, segments=segments, encoded=data, encoded_size=(h, w),
                                                notes=notes + dropped)
                if draft is None:
                    pixels, warning = _fast_decode(path, img.format, img.mode, data)
                elif img.format in JPEG_FORMATS and img.mode in ("RGB", "L"):  # checked for damage like a full decode
                    pixels, warning = _decode_jpeg(np.fromfile(path, dtype=np.uint8), "GRAY", draft)
                else:
                    pixels, warning = None, None
                if pixels is None:
                    if draft is not None and img.format in JPEG_FORMATS:
                        img.draft("L", draft)
                    img.load()
                    pixels = _to_uint8_array(img)
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        if fmt := named_by_signature(head):  # a TIFF cut before its directory, a JPEG's header overwritten
            raise ImageReadError(path, f"damaged {fmt} file: it starts as a {fmt} does, but no decoder can read its header (cut short or overwritten)") from None
        raise ImageReadError(path, "not a readable image (unknown or corrupt format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(path, f"image too large (decompression bomb guard): {exc}") from None
    except UnsupportedPixels as exc:
        raise ImageReadError(path, f"unsupported image: {exc}") from None
    except DamagedJpeg as exc:
        raise ImageReadError(path, str(exc)) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageReadError(path, f"corrupt or truncated image: {exc}") from None
    except MemoryError:
        raise ImageReadError(path, "not enough memory to decode it") from None
    except ImportError:  # a broken install (simplejpeg missing) is not a corrupt photo
        raise
    except Exception as exc:  # Pillow's plugins raise other types on damaged files (a TIFF: TypeError "Missing dimensions")
        raise ImageReadError(path, f"corrupt image ({type(exc).__name__}: {exc})") from None
    stored = (h, w) if pixels.shape[:2] != (h, w) else None
    kept_icc, dropped = _icc_of_pixels(icc, pixels.shape[2])
    return DecodedImage(np.ascontiguousarray(pixels), exif=exif, icc_profile=kept_icc, segments=segments, stored_size=stored, notes=notes + dropped,
                        warnings=(warning,) if warning else ())


_XMP_PREFIX = b"http://ns.adobe.com/x"  # XMP (".../xap/1.0/") and extended XMP (".../xmp/extension/")
_MARKERS = {"APP1": b"\xff\xe1", "APP13": b"\xff\xed"}


_MAIN_XMP = b"http://ns.adobe.com/xap/1.0/\x00"
# What a phone's XMP says of data stored after its JPEG, which an output never holds (it is the
# main image encoded again): an Ultra HDR gain map (the hdrgm namespace, and the GContainer
# directory listing it with its byte length), a Motion Photo's video (GCamera's MotionPhoto
# and older MicroVideo properties, with the video's offset) and a Dynamic Depth photo's depth
# map and cameras (its Device namespace, directory included). Left in, a viewer looks for them
# at offsets where nothing is.
_DEVICE_NAMESPACE = "http://ns.google.com/photos/dd/1.0/device/"
_APPENDED_DATA_PROPERTIES = (
    ("http://ns.adobe.com/hdr-gain-map/1.0/", r"\w+"),
    ("http://ns.google.com/photos/1.0/container/", r"Directory"),
    ("http://ns.google.com/photos/1.0/camera/", r"(?:MotionPhoto|MicroVideo)\w*"),
    (_DEVICE_NAMESPACE, r"\w+"),
)


def _kept_segments(img: Image.Image) -> tuple[tuple[bytes, ...], tuple[str, ...]]:
    """A JPEG's XMP and IPTC (Photoshop APP13) segments as they are in the file, but for what
    its main XMP says of data after the image (`_without_appended_data`), and the notes that
    leaves (``motion_video_dropped``, ``depth_dropped``)."""
    out, notes = [], ()
    for marker, payload in getattr(img, "applist", []):
        if (marker == "APP1" and payload.startswith(_XMP_PREFIX)) or marker == "APP13":
            if marker == "APP1" and payload.startswith(_MAIN_XMP):
                payload, notes = _without_appended_data(payload)
            out.append(_MARKERS[marker] + (len(payload) + 2).to_bytes(2, "big") + payload)
    return tuple(out), notes


def _without_appended_data(payload: bytes) -> tuple[bytes, tuple[str, ...]]:
    """The main XMP segment's payload without `_APPENDED_DATA_PROPERTIES`, as attributes or
    as elements, whatever prefix the packet binds their namespaces to; everything else
    (rights, ratings, keywords, edits) byte for byte."""
    try:
        xmp = payload[len(_MAIN_XMP):].decode("utf-8")
    except UnicodeDecodeError:  # not the UTF-8 that XMP in a JPEG must be: left as it is
        return payload, ()
    notes = ()
    for namespace, names in _APPENDED_DATA_PROPERTIES:
        for prefix in set(re.findall(r"xmlns:([\w.-]+)\s*=\s*[\"']" + re.escape(namespace) + "[\"']", xmp)):
            p = re.escape(prefix)
            if namespace.endswith("/camera/") and re.search(p + r":(?:MotionPhoto|MicroVideo)\s*=\s*[\"']1[\"']|<" + p + r":(?:MotionPhoto|MicroVideo)>\s*1\s*<", xmp):
                notes += ("motion_video_dropped",)
            before = xmp
            xmp = re.sub(r"\s" + p + ":" + names + r"\s*=\s*(?:\"[^\"]*\"|'[^']*')", "", xmp)
            xmp = re.sub(r"<" + p + ":(" + names + r")\b[^>]*?(?:/>|>.*?</" + p + r":\1\s*>)", "", xmp, flags=re.S)
            if namespace == _DEVICE_NAMESPACE and xmp != before:
                notes += ("depth_dropped",)
    return _MAIN_XMP + xmp.encode("utf-8"), tuple(sorted(set(notes)))


def without_thumbnail(exif: bytes | None) -> bytes | None:
    """EXIF with the link to its second IFD, the embedded thumbnail, cut: a camera's thumbnail
    shows the uncorrected photo, and file browsers show it in place of the corrected one. The
    rest (orientation, capture data, maker notes) is kept byte for byte; a block this does not
    understand is kept as it is."""
    if not exif:
        return exif
    head = 6 if exif.startswith(b"Exif\x00\x00") else 0
    tiff = exif[head:]
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return exif
    ifd0 = struct.unpack(order + "I", tiff[4:8])[0]
    if ifd0 + 2 > len(tiff):
        return exif
    link = ifd0 + 2 + 12 * struct.unpack(order + "H", tiff[ifd0 : ifd0 + 2])[0]
    if link + 4 > len(tiff) or tiff[link : link + 4] == b"\x00\x00\x00\x00":
        return exif
    return exif[: head + link] + b"\x00\x00\x00\x00" + exif[head + link + 4 :]


def output_format(path: Path) -> str:
    """"PNG" for a .png name, else "JPEG"."""
    return "PNG" if path.suffix.lower() == ".png" else "JPEG"


def _exif_payload(exif: bytes) -> bytes:
    return exif if exif.startswith(b"Exif\x00\x00") else b"Exif\x00\x00" + exif


def exif_fits_jpeg(exif: bytes | None) -> bool:
    """Whether a JPEG output can hold ``exif``: one APP1 segment, 65,533 bytes at most (a
    PNG's, WebP's or HEIC's EXIF may be larger; the JPEG output then has none: `exif_dropped`)."""
    return not exif or len(exif) + (0 if exif.startswith(b"Exif\x00\x00") else 6) <= 65533


def _jpeg_segments(exif: bytes | None, icc: bytes | None, segments: tuple[bytes, ...] = ()) -> bytes:
    """APP1 (Exif) where it fits, the kept XMP and IPTC segments, and APP2 (ICC_PROFILE, split
    into chunks)."""
    out = b""
    if exif and exif_fits_jpeg(exif):
        payload = _exif_payload(exif)
        out += b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    out += b"".join(segments)
    if icc:
        chunk = 65519
        parts = [icc[i : i + chunk] for i in range(0, len(icc), chunk)]
        for n, part in enumerate(parts, 1):
            payload = b"ICC_PROFILE\x00" + bytes([n, len(parts)]) + part
            out += b"\xff\xe2" + (len(payload) + 2).to_bytes(2, "big") + payload
    return out


def _encode_jpeg_opencv(pixels: np.ndarray, exif: bytes | None, icc: bytes | None, quality: int, segments: tuple[bytes, ...] = ()) -> bytes:
    bgr = pixels[..., 0] if pixels.shape[2] == 1 else cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return splice_jpeg_metadata(buf.tobytes(), exif, icc, segments)


def splice_jpeg_metadata(data: bytes, exif: bytes | None, icc: bytes | None, segments: tuple[bytes, ...] = ()) -> bytes:
    """``data`` (a JPEG from an encoder that writes no metadata) with the input's inserted."""
    return b"".join(jpeg_metadata_pieces(data, exif, icc, segments))


def jpeg_metadata_pieces(data, exif: bytes | None, icc: bytes | None, segments: tuple[bytes, ...] = ()) -> list:
    """`splice_jpeg_metadata` as the buffers to write one after the other (``data`` may be a
    memoryview: its parts are not copied)."""
    extra = _jpeg_segments(exif, icc, segments)
    if not extra:
        return [data]
    # After SOI and the encoder's JFIF APP0, as Pillow would place them.
    pos = 2
    if data[2:4] == b"\xff\xe0":
        pos = 4 + int.from_bytes(data[4:6], "big")
    return [data[:pos], extra, data[pos:]]


def encode_image(image: DecodedImage, fmt: str, quality: int = JPEG_QUALITY) -> bytes:
    """Deterministic encoding: JPEG at ``quality`` with 4:4:4 chroma, or PNG.

    JPEG has no alpha channel: RGBA is flattened to RGB there (the alpha is dropped)."""
    import io

    pixels = image.pixels
    channels = pixels.shape[2]
    if fmt == "JPEG" and channels == 4:
        pixels = pixels[..., :3]
        channels = 3
    if fmt == "JPEG":
        return _encode_jpeg_opencv(np.ascontiguousarray(pixels), image.exif, image.icc_profile, quality, image.segments)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
    img = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode=mode)
    options: dict = {}
    if image.exif:
        options["exif"] = image.exif
    if image.icc_profile:
        options["icc_profile"] = image.icc_profile
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


#: A write's errors after which every later write fails too: no space left, disk quota exceeded
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})

_NAME_MAX = 255  # bytes in a file name: ext4, XFS, Btrfs, APFS, NTFS (in UTF-16 units)


def _cut_name(name: str, limit: int) -> str:
    """The longest start of ``name`` whose file-system bytes fit in ``limit``, cut between
    characters. A name that is not UTF-8 (a Latin-1 "K\xfcche.jpg" from an old archive) holds
    its raw bytes as surrogate escapes, one byte each."""
    out, size = [], 0
    for ch in name:
        size += len(os.fsencode(ch))
        if size > limit:
            break
        out.append(ch)
    return "".join(out)


def write_atomic(path: str | os.PathLike, data: bytes | list, durable: bool = False) -> int:
    """Write ``data`` (bytes, or a list of buffers written one after the other) to ``path`` so
    that ``path`` is either absent, its old content, or the complete new content, even if the
    process is killed: temp file in the same folder, then rename. ``durable`` also fsyncs
    before the rename, which survives a power cut too; it costs ~5 ms per file, so images skip
    it and checkpoints and zips use it (a run's records hold each image's size instead, which
    ``--resume`` checks). Returns the bytes written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the name cut so that the temporary's fits where the output's does (255 bytes on most
    # file systems: ".", the name, ".", mkstemp's 8 characters, ".part")
    short = _cut_name(path.name, _NAME_MAX - 15)
    fd, tmp = tempfile.mkstemp(prefix=f".{short}.", suffix=".part", dir=path.parent)
    try:
        written = 0
        with os.fdopen(fd, "wb") as fh:
            for piece in data if isinstance(data, list) else (data,):
                written += fh.write(piece)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
        return written
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:  # a write's error names no file: name the one wanted
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise


def write_image(path: str | os.PathLike, image: DecodedImage, quality: int = JPEG_QUALITY) -> None:
    """Encode by the name's suffix (`output_format`) and write atomically."""
    path = Path(path)
    write_atomic(path, encode_image(image, output_format(path), quality))


def _files(folder: Path, recursive: bool, skip: Path | None, seen: set[Path] | None = None) -> Iterator[Path]:
    """Files inside ``folder`` (and its subfolders if ``recursive``), hidden ones left out, and
    subfolders that are ``skip`` (a run's own output folder) or hold a `lens run`'s metadata
    folder (an earlier run's output): their photos are corrections already. A folder reached
    twice (a symbolic link back up the tree) is read once."""
    seen = seen if seen is not None else {folder.resolve()}
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            real = p.resolve()
            if recursive and real != skip and real not in seen and not (p / "lens-run").is_dir():
                seen.add(real)
                yield from _files(p, True, skip, seen)
        elif p.is_file() or p.is_symlink():  # a broken link to a photo fails with its reason instead of vanishing
            yield p


def scan_inputs(folder: Path, recursive: bool = False, skip: Path | None = None) -> tuple[list[Path], dict[str, int], int]:
    """One walk of ``folder`` (`_files`): its image files sorted by path (deterministic order),
    the other files counted by suffix (a shoot's HEIC or RAW files should not vanish without a
    word), and how many workload targets were left out (`is_workload_target`)."""
    images, ignored = [], {}
    for p in _files(folder, recursive, skip):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            images.append(p)
        else:
            key = p.suffix.lower() or "(no suffix)"
            ignored[key] = ignored.get(key, 0) + 1
    names = {(p.parent, p.name.lower()) for p in images}
    inputs = [p for p in images if not is_workload_target(p, names)]
    return sorted(inputs), dict(sorted(ignored.items())), len(images) - len(inputs)


def is_workload_target(path: Path, names: set[tuple[Path, str]]) -> bool:
    """Whether ``path`` is the corrected target of a workload pair: ``<id>_generated.jpg``
    beside its input ``<id>_original.jpg`` (``names``: (folder, lower-case name) of the
    images around it). Correcting a target again would be wasted work and an extra entry."""
    name = path.name.lower()
    return name.endswith(WORKLOAD_TARGET_SUFFIX) and (path.parent, name[: -len(WORKLOAD_TARGET_SUFFIX)] + WORKLOAD_INPUT_SUFFIX) in names


def output_stem(path: Path) -> str:
    """The stem that a correction of ``path`` is named by: its own, or ``<id>`` for a workload
    input ``<id>_original.jpg`` (a submission entry is ``<id>.jpg``)."""
    if path.name.lower().endswith(WORKLOAD_INPUT_SUFFIX) and len(path.name) > len(WORKLOAD_INPUT_SUFFIX):
        return path.name[: -len(WORKLOAD_INPUT_SUFFIX)]
    return path.stem


def output_name(path: Path) -> str:
    """The file name of the correction of ``path``: `output_stem`, ``.png`` for a PNG, else
    ``.jpg`` (every other format is written as JPEG)."""
    return output_stem(path) + (".png" if path.suffix.lower() == ".png" else ".jpg")


def claim_names(wanted: list[tuple[Path, str]], key: Callable[[str], str] = lambda name: name) -> tuple[dict[str, Path], list[tuple[Path, str, Path]]]:
    """Output names for (source, name) wishes, two corrections whose names have one ``key``
    contending (by default: one name, overwriting each other): the source already named so
    (its file name is the name's last part) keeps it, else the first by path. The names held
    (in the sources' order) and the sources refused, as (source, name, holder)."""
    named, holders, refused = {}, {}, []
    for s, name in sorted(wanted, key=lambda w: (w[0].name != Path(w[1]).name, w[0])):
        if key(name) in holders:
            refused.append((s, name, holders[key(name)]))
        else:
            named[name] = holders[key(name)] = s
    return dict(sorted(named.items(), key=lambda item: item[1])), refused


def claim_output_names(sources: list[Path], root: Path | None) -> tuple[dict[str, Path], list[tuple[Path, str, Path]]]:
    """`claim_names` for `lens run`'s outputs: each source's `output_name`, as a posix path
    below ``root`` (None: the name alone). They contend by id, the name without its suffix:
    "a.png" (kept a PNG) and "a.tif" (written "a.jpg") both are image "a", whose record, resume
    state and submission entry are one. `lens qa` reads its expected ids by this too."""
    return claim_names([(s, (s.relative_to(root) if root is not None else Path(s.name)).with_name(output_name(s)).as_posix()) for s in sources],
                       key=image_id)


def image_id(output: str) -> str:
    """An image's id: its output's posix path below the output folder, without the suffix."""
    return str(PurePosixPath(output).with_suffix(""))


def list_images(folder: Path, recursive: bool = False, skip: Path | None = None) -> list[Path]:
    """The image files of `scan_inputs`."""
    return scan_inputs(folder, recursive, skip)[0]
