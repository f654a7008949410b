"""Every kind of input file is decoded or refused with a reason; writes are atomic."""
import io
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from lens.runtime import io as lio

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def _save(path, img, **kw):
    img.save(path, **kw)
    return path


@pytest.mark.parametrize(
    "mode,channels",
    [("L", 1), ("RGB", 3), ("RGBA", 4), ("CMYK", 3), ("P", 3), ("LA", 4), ("I;16", 1), ("1", 3)],
)
def test_modes_decode_to_8bit(tmp_path, mode, channels):
    base = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    img = base.convert(mode) if mode not in ("I;16",) else Image.fromarray(np.full((20, 30), 40000, dtype=np.uint16))
    ext = ".tif" if mode in ("CMYK", "I;16", "LA") else ".png"
    decoded = lio.read_image(_save(tmp_path / f"x{ext}", img))
    assert decoded.pixels.dtype == np.uint8
    assert decoded.pixels.shape == (20, 30, channels)
    if mode == "I;16":
        assert decoded.pixels.max() == round(40000 * 255 / 65535)  # scaled, not clipped


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_colour_photos_decode_in_rgb_order(tmp_path, ext):
    # the fast OpenCV decoder must hand back the same channels, in the same order, as Pillow
    colours = np.zeros((32, 96, 3), np.uint8)
    colours[:, :32, 0] = 220  # red | green | blue
    colours[:, 32:64, 1] = 220
    colours[:, 64:, 2] = 220
    path = _save(tmp_path / f"c{ext}", Image.fromarray(colours), **({"quality": 95} if ext == ".jpg" else {}))
    decoded = lio.read_image(path).pixels
    with Image.open(path) as img:
        expected = np.asarray(img.convert("RGB"))
    assert np.abs(decoded.astype(int) - expected).max() <= (0 if ext == ".png" else 2)
    assert decoded[16, 16].argmax() == 0 and decoded[16, 48].argmax() == 1 and decoded[16, 80].argmax() == 2


def test_truncated_and_non_images_name_the_reason(tmp_path):
    good = _save(tmp_path / "g.jpg", Image.new("RGB", (64, 64), "red"))
    data = good.read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "z.jpg").write_bytes(b"")
    (tmp_path / "n.jpg").write_bytes(b"hello")
    with pytest.raises(lio.ImageReadError, match="truncated"):
        lio.read_image(tmp_path / "t.jpg")
    with pytest.raises(lio.ImageReadError, match="empty file"):
        lio.read_image(tmp_path / "z.jpg")
    with pytest.raises(lio.ImageReadError, match="n.jpg: not a readable image"):
        lio.read_image(tmp_path / "n.jpg")


def _scan_cut(data: bytes, length: int = 200) -> bytes:
    """A JPEG with ``length`` bytes cut out of the middle of its compressed data, its end marker
    kept (a damaged copy or transfer)."""
    middle = (data.index(b"\xff\xda") + len(data)) // 2
    return data[:middle] + data[middle + length :]


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_damaged_jpeg_data_is_refused_and_stray_bytes_are_not(tmp_path, mode):
    # libjpeg decodes a JPEG whose data breaks off with its bottom grey and only warns; OpenCV
    # printed that warning, unattributed, and the grey photo was corrected as "ok"
    photo = Image.open(SAMPLES / "rocket.jpg").convert(mode).resize((256, 171))
    good = _save(tmp_path / "good.jpg", photo, quality=90)
    data = good.read_bytes()
    (tmp_path / "damaged.jpg").write_bytes(_scan_cut(data))
    with pytest.raises(lio.ImageReadError, match=r"damaged.jpg: corrupt JPEG data: premature end of data segment \(libjpeg\): part of the image"):
        lio.read_image(tmp_path / "damaged.jpg")
    # a phone's Motion Photo: its video after the JPEG's end marker is not read, and the JPEG
    # is checked all the same
    video = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8
    (tmp_path / "motion.jpg").write_bytes(data + video)
    assert np.array_equal(lio.read_image(tmp_path / "motion.jpg").pixels, lio.read_image(good).pixels)
    (tmp_path / "damaged_motion.jpg").write_bytes(_scan_cut(data) + video)
    with pytest.raises(lio.ImageReadError, match="damaged_motion.jpg: corrupt JPEG data"):
        lio.read_image(tmp_path / "damaged_motion.jpg")
    # cut short in its compressed data (the usual broken download), with or without the video
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) - 300])
    with pytest.raises(lio.ImageReadError, match=r"cut.jpg: truncated JPEG: premature end of JPEG file \(libjpeg\)"):
        lio.read_image(tmp_path / "cut.jpg")
    # stray bytes before the end marker (some cameras write them) make libjpeg warn too, but
    # the pixels are whole: the same as the clean file's
    (tmp_path / "stray.jpg").write_bytes(data[:-2] + bytes(7) + data[-2:])
    stray = lio.read_image(tmp_path / "stray.jpg")
    assert np.array_equal(stray.pixels, lio.read_image(good).pixels)
    # ... but so can damage that garbles the rest of the photo: what libjpeg said is kept
    assert len(stray.warnings) == 1 and not lio.read_image(good).warnings
    assert re.fullmatch(r"corrupt JPEG data: \d extraneous bytes before marker 0xd9 \(libjpeg\)", stray.warnings[0]), stray.warnings
    # ... and before a header segment, where TurboJPEG refuses the file: OpenCV decodes it
    table = data.index(b"\xff\xc4")
    (tmp_path / "stray_header.jpg").write_bytes(data[:table] + bytes(5) + data[table:])
    assert np.array_equal(lio.read_image(tmp_path / "stray_header.jpg").pixels, lio.read_image(good).pixels)


def _idat_flipped(data: bytes) -> bytes:
    """A PNG with one bit flipped in the middle of its image data, its chunk's CRC left as it was."""
    damaged = bytearray(data)
    damaged[data.index(b"IDAT") + 4 + 600] ^= 0x10
    return bytes(damaged)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow's, trying the cut TIFF's directory
@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_damaged_png_webp_and_tiff_files_are_refused_naming_the_damage(tmp_path, mode):
    """A PNG's image data whose CRC does not match: OpenCV's libpng printed its error unattributed
    and Pillow decoded it with garbled pixels or a cryptic error (for RGBA, Pillow's only
    decoder, garbled pixels and no error at all in 2 of 40 flipped bits); a WebP or TIFF cut
    short was "could not create decoder object" and "unknown or corrupt format"."""
    photo = Image.open(SAMPLES / "rocket.jpg").resize((256, 171)).convert(mode)
    good = _save(tmp_path / "good.png", photo)
    data = good.read_bytes()
    (tmp_path / "flipped.png").write_bytes(_idat_flipped(data))
    with pytest.raises(lio.ImageReadError, match=r"flipped.png: corrupt PNG: its IDAT chunk at byte [\d,]+ fails its CRC check"):
        lio.read_image(tmp_path / "flipped.png")
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(lio.ImageReadError, match=r"cut.png: truncated PNG: the file ends inside its IDAT chunk"):
        lio.read_image(tmp_path / "cut.png")
    # whatever follows the IEND chunk (some tools append data) is not the image's
    (tmp_path / "appended.png").write_bytes(data + b"appended by an uploader")
    assert np.array_equal(lio.read_image(tmp_path / "appended.png").pixels, lio.read_image(good).pixels)
    webp = _save(tmp_path / "whole.webp", photo).read_bytes()
    (tmp_path / "cut.webp").write_bytes(webp[: len(webp) // 2])
    tiff = cv2.imencode(".tiff", np.asarray(photo))[1].tobytes()  # libtiff writes its directory last, as cameras' TIFFs have it
    (tmp_path / "cut.tiff").write_bytes(tiff[: len(tiff) // 2])
    with pytest.raises(lio.ImageReadError, match=r"cut.webp: truncated WebP: the file has [\d,]+ of the [\d,]+ bytes its RIFF header gives"):
        lio.read_image(tmp_path / "cut.webp")
    with pytest.raises(lio.ImageReadError, match="cut.tiff: damaged TIFF file: it starts as a TIFF does"):
        lio.read_image(tmp_path / "cut.tiff")


def test_huge_and_tiny_images_are_refused(tmp_path, monkeypatch):
    path = _save(tmp_path / "big.png", Image.new("RGB", (100, 100)))
    monkeypatch.setattr(lio, "MAX_PIXELS", 5000)
    with pytest.raises(lio.ImageReadError, match="too large"):
        lio.read_image(path)
    tiny = _save(tmp_path / "tiny.png", Image.new("RGB", (1, 5)))
    with pytest.raises(lio.ImageReadError, match="too small"):
        lio.read_image(tiny)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow's own word on the damaged header
def test_damaged_files_that_break_pillow_in_other_ways_are_refused_with_a_reason(tmp_path):
    """One byte of a TIFF's header changed (found by flipping bytes of 3600 files): Pillow
    raised TypeError("Missing dimensions"), which no caller expected, and `lens run` stopped."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 96, 3), np.uint8)).save(buf, format="TIFF")
    data = bytearray(buf.getvalue())
    data[133] = 35
    path = tmp_path / "damaged.tif"
    path.write_bytes(bytes(data))
    with pytest.raises(lio.ImageReadError, match="corrupt image"):
        lio.read_image(path)


def test_a_100_megapixel_photo_is_read_not_refused_as_a_bomb(tmp_path):
    """Pillow's own guard starts at 89.5 MP: a medium-format camera's 100 MP photo (11648 x
    8736, Fujifilm GFX100) was refused as a decompression bomb, below the documented 150 MP."""
    path = _save(tmp_path / "gfx100.png", Image.new("L", (11648, 8736), 90))
    assert lio.read_image(path).pixels.shape == (8736, 11648, 1)
    bomb = _save(tmp_path / "bomb.png", Image.new("1", (13000, 12000)))  # 156 MP
    with pytest.raises(lio.ImageReadError, match="too large"):
        lio.read_image(bomb)


def test_atomic_write_keeps_old_content_when_encoding_fails(tmp_path):
    target = tmp_path / "out.jpg"
    target.write_bytes(b"old")
    bad = lio.DecodedImage(np.zeros((4, 4, 2), dtype=np.uint8))  # 2 channels: not encodable
    with pytest.raises(Exception):
        lio.write_image(target, bad)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.jpg"]


def test_metadata_spliced_into_an_encoders_buffer_is_written_without_joining_it(tmp_path):
    """The GPU path writes the encoder's JPEG (a memoryview of nvImageCodec's buffer) and the
    input's EXIF, ICC and XMP as pieces: the file is the spliced JPEG, readable, metadata and
    pixels intact."""
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "Canon"
    xmp = b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta>rating 5</x:xmpmeta>"
    segment = b"\xff\xe1" + (len(xmp) + 2).to_bytes(2, "big") + xmp
    icc = b"\x00" * 700
    encoded = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(encoded, format="JPEG", quality=95)
    data = memoryview(bytearray(encoded.getvalue()))
    pieces = lio.jpeg_metadata_pieces(data, exif.tobytes(), icc, (segment,))
    assert len(pieces) == 3 and isinstance(pieces[0], memoryview) and isinstance(pieces[2], memoryview)  # no copy of the image data
    lio.write_atomic(tmp_path / "out.jpg", pieces)
    written = (tmp_path / "out.jpg").read_bytes()
    assert written == lio.splice_jpeg_metadata(bytes(data), exif.tobytes(), icc, (segment,))
    with Image.open(tmp_path / "out.jpg") as img:
        assert img.getexif()[0x0112] == 6 and img.getexif()[0x010F] == "Canon"
        assert img.info["icc_profile"] == icc
        assert any(p.startswith(b"http://ns.adobe.com/xap/1.0/") for m, p in img.applist if m == "APP1")
        assert np.array_equal(np.asarray(img), np.asarray(Image.open(io.BytesIO(encoded.getvalue()))))
    assert not [p for p in tmp_path.iterdir() if p.name != "out.jpg"]  # no temporary left
