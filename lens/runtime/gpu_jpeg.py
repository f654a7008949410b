"""JPEG decode and encode on the GPU with nvImageCodec (optional extra ``gpu-codecs``).

With a CUDA build of torch and nvImageCodec installed, RGB JPEG inputs are decoded straight
into GPU memory and the corrected images are encoded there (quality 95, 4:4:4 like the CPU
writer): pixels never cross PCIe, and the CPU only reads and writes files. nvImageCodec is
NVIDIA's maintained codec library (nvJPEG, including the hardware JPEG engines of A100/H100
class GPUs) with a Python API that exchanges buffers with torch through DLPack; torchvision's
GPU encoder cannot write 4:4:4 chroma.

Which files take this path (`device_decodable`): baseline or progressive 8-bit 3-channel
JPEGs that end in their EOI marker. Everything else (greyscale, CMYK, PNG, truncated files,
16-bit...) is decoded on the CPU as before (`lens.runtime.io.read_image`), which also names
what is wrong with a bad file. Pixels are kept in their stored orientation (EXIF orientation
is not applied, as on the CPU path) and EXIF and ICC are copied into the output.
"""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path


class GpuJpegUnavailable(RuntimeError):
    pass


def _buffer_of(code_stream):
    """The encoded bytes without a copy where the code stream exports its buffer (a
    memoryview keeps the code stream alive): copying ~1.5 MB per photo held the GIL."""
    try:
        return memoryview(code_stream)
    except TypeError:
        return bytes(code_stream)


class GpuJpegCodec:
    """Batch JPEG decode into, and 4:4:4 encode from, torch CUDA tensors ``(H, W, 3)`` uint8."""

    def __init__(self, device: int = 0):
        try:
            import torch
            from nvidia import nvimgcodec
        except ImportError as exc:
            raise GpuJpegUnavailable(f"GPU JPEG codec needs torch (CUDA) and nvImageCodec: pip install '.[gpu-codecs]' ({exc.name} missing)") from None
        if not torch.cuda.is_available():
            raise GpuJpegUnavailable("GPU JPEG codec: torch sees no CUDA GPU")
        self.torch = torch
        self.nv = nvimgcodec
        self.device = device
        try:
            self.decoder = nvimgcodec.Decoder(device_id=device)
            self.encoder = nvimgcodec.Encoder(device_id=device)
        except Exception as exc:  # the library loads but finds no nvJPEG / no driver
            raise GpuJpegUnavailable(f"nvImageCodec failed to start: {exc}") from None
        self.decode_params = nvimgcodec.DecodeParams(apply_exif_orientation=False, color_spec=nvimgcodec.ColorSpec.SRGB)
        # One lock and one CUDA stream each: one thread decodes (partly on CPU threads, on the
        # GPU's JPEG engines) while another runs the model and a third encodes. On the default
        # stream they queued behind each other's GPU work, and every wait waited for all of it.
        self.decode_lock = threading.Lock()
        self.encode_lock = threading.Lock()
        self.decode_stream = torch.cuda.Stream(device)
        self.encode_stream = torch.cuda.Stream(device)

    @contextlib.contextmanager
    def exclusive(self):
        """No decode or encode runs while this is held."""
        with self.decode_lock, self.encode_lock:
            yield

    def decode(self, datas: list[bytes]) -> tuple[list, object]:
        """One ``(H, W, 3)`` uint8 CUDA tensor per JPEG, or None where nvImageCodec could not
        decode it (the caller falls back to the CPU decoder for that file), and the CUDA event
        after which they may be read. The tensors' memory is nvImageCodec's: keep them until
        the work reading them is done."""
        torch = self.torch
        streams = [self.nv.CodeStream(d) for d in datas]
        with self.decode_lock, torch.cuda.stream(self.decode_stream):
            images = self.decoder.decode(streams, params=self.decode_params, cuda_stream=self.decode_stream.cuda_stream)
            out = []
            for img in images:
                t = None if img is None else torch.from_dlpack(img)  # ordered after the decode on this stream
                out.append(t if t is not None and t.dim() == 3 and t.shape[2] == 3 and t.dtype == torch.uint8 else None)
            ready = torch.cuda.Event()
            ready.record(self.decode_stream)
        return out, ready

    def encode(self, images: list, quality: int, after=None) -> list:
        """JPEG bytes (quality ``quality``, 4:4:4), as buffers, of ``(H, W, 3)`` uint8 CUDA
        tensors, complete or complete at the CUDA event ``after``."""
        nv = self.nv
        params = nv.EncodeParams(quality_type=nv.QualityType.QUALITY, quality_value=float(quality), chroma_subsampling=nv.ChromaSubsampling.CSS_444)
        stream = self.encode_stream
        if after is not None:
            stream.wait_event(after)
        with self.torch.cuda.stream(stream):  # a copy made contiguous here is ordered after ``after``
            images = [t if t.is_contiguous() else t.contiguous() for t in images]
        for t in images:  # the allocator must not hand their memory to another stream's work before the encode has read it
            t.record_stream(stream)
        wrapped = [nv.as_image(t, cuda_stream=stream.cuda_stream) for t in images]
        with self.encode_lock:
            streams = self.encoder.encode(wrapped, "jpeg", params=params, cuda_stream=stream.cuda_stream)
        if any(s is None for s in streams):
            raise GpuJpegUnavailable("nvImageCodec failed to encode a JPEG")
        return [_buffer_of(s) for s in streams]


_CODECS: dict[int, GpuJpegCodec] = {}
_CODECS_LOCK = threading.Lock()


def shared_codec(device: int = 0) -> GpuJpegCodec:
    """One codec per GPU and process: starting nvImageCodec (nvJPEG handles, pinned buffers)
    costs about as much as a few dozen images, so repeated runs in one process share it."""
    with _CODECS_LOCK:
        if device not in _CODECS:
            _CODECS[device] = GpuJpegCodec(device)
        return _CODECS[device]


def device_decodable(path: Path, fmt: str | None, mode: str) -> bool:
    """True for the files `GpuJpegCodec` decodes exactly like the CPU path, from Pillow's
    header: 8-bit RGB JPEGs whose output is a JPEG too (a JPEG named .png is written as PNG).
    The caller also checks the EOI marker (a file cut short goes to the CPU decoder)."""
    from lens.runtime.io import JPEG_FORMATS

    return fmt in JPEG_FORMATS and mode == "RGB" and path.suffix.lower() != ".png"
