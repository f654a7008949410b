"""Checks of an image file's container, before or instead of its decoder's word on it.

PNG: every chunk carries a CRC-32 of its type and data. Pillow checks the chunks before the
image data and not the image data (IDAT) itself; libpng checks them all but prints its error
to stderr, naming no file, and OpenCV then returns nothing. Of 40 RGBA PNGs with one bit
flipped, Pillow decoded 2 without an error, both with garbled pixels; a CRC-32 catches every
single-bit flip. WebP: libwebp, through Pillow, says only "could not create decoder object"
of a file cut short, while its RIFF header gives the file's length. A file whose header no
decoder reads (a TIFF cut before its directory) is named by its first bytes where they are a
known format's, instead of "unknown format".
"""
from __future__ import annotations

import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# first bytes -> format, for files no decoder could open (`named_by_signature`)
_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (PNG_SIGNATURE, "PNG"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
               (b"BM", "BMP"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"))


def _chunk_name(kind) -> str | None:
    """A chunk type's four ASCII letters, or None where the bytes are not a chunk type."""
    name = bytes(kind).decode("latin-1")
    return name if len(name) == 4 and name.isascii() and name.isalpha() else None


def png_problem(data) -> str | None:
    """Why a PNG's chunks are not whole (cut short, a CRC that does not match, a chunk that is
    not one), or None. ``data``: the file's bytes (bytes, or a uint8 array: not copied)."""
    view = memoryview(data).cast("B")
    pos, size = len(PNG_SIGNATURE), len(view)
    while True:
        if pos + 12 > size:
            return f"truncated PNG: the file ends at byte {size:,}, before its IEND chunk (cut short)"
        length = int.from_bytes(view[pos : pos + 4], "big")
        name = _chunk_name(view[pos + 4 : pos + 8])
        if name is None:
            return f"corrupt PNG: no chunk where one should start (byte {pos:,}): the file is damaged"
        end = pos + 12 + length
        if end > size:
            return f"truncated PNG: the file ends inside its {name} chunk (byte {pos:,}, {size - pos - 12:,} of {length:,} bytes): cut short"
        if zlib.crc32(view[pos + 4 : end - 4]) != int.from_bytes(view[end - 4 : end], "big"):
            return f"corrupt PNG: its {name} chunk at byte {pos:,} fails its CRC check: the file is damaged"
        if name == "IEND":
            return None
        pos = end


def webp_problem(head: bytes, size: int) -> str | None:
    """Why a WebP file is not whole (shorter than its RIFF header says), or None. ``head``: its
    first 12 bytes at least; ``size``: its length."""
    if head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return None
    declared = int.from_bytes(head[4:8], "little") + 8
    if size < declared:
        return f"truncated WebP: the file has {size:,} of the {declared:,} bytes its RIFF header gives (cut short, or bytes lost)"
    return None


def named_by_signature(head: bytes) -> str | None:
    """The format whose signature ``head`` (a file's first bytes) starts with, or None."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((name for signature, name in _SIGNATURES if head.startswith(signature)), None)
