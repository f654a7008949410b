"""TensorRT engines from the exported ONNX, through polygraphy's loaders.

Polygraphy composes the TensorRT Python API into lazy loaders
(``EngineFromNetwork(NetworkFromOnnxPath(p), CreateConfig(...))``) and is what NVIDIA's own
tools use, so it carries the version differences between TensorRT 10 and 11 for us.

Networks are built *strongly typed*: the precision is the one written into the ONNX graph
(fp16 layers for the network, fp32 for the grid and GridSample). TensorRT 11 removed the FP16
builder flag and only builds strongly typed networks; TensorRT 10 supports them too, so one
code path serves both.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class TensorRTUnavailable(RuntimeError):
    """Why no engine can be built here (one line)."""


@dataclass(frozen=True)
class ShapeProfile:
    """Optimisation profile for the image input, each shape ``(B, 3, H, W)``."""

    min: tuple[int, int, int, int] = (1, 3, 256, 256)
    opt: tuple[int, int, int, int] = (4, 3, 1367, 2048)
    max: tuple[int, int, int, int] = (8, 3, 3000, 4000)

    @staticmethod
    def parse(text: str) -> tuple[int, int, int, int]:
        parts = tuple(int(p) for p in text.lower().split("x"))
        if len(parts) != 4 or parts[1] != 3 or min(parts) < 1:
            raise ValueError(f"shape {text!r}: expected BATCHx3xHEIGHTxWIDTH, e.g. 4x3x1367x2048")
        return parts  # type: ignore[return-value]

    def to_dict(self) -> dict:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def tensorrt_status() -> tuple[object, str]:
    """(tensorrt module, GPU description) or raise `TensorRTUnavailable` saying why not."""
    try:
        import tensorrt as trt  # noqa: F401
    except ImportError:
        raise TensorRTUnavailable("TensorRT is not installed (pip install '.[trt]' on a machine with an NVIDIA GPU and TensorRT's libraries)") from None
    except Exception as exc:  # PyPI's stub raises when its libraries are missing
        raise TensorRTUnavailable(f"TensorRT cannot load its libraries: {exc}") from None
    try:
        import polygraphy  # noqa: F401
    except ImportError:
        raise TensorRTUnavailable("polygraphy is not installed (pip install '.[trt]')") from None
    try:
        from cuda import cudart  # type: ignore

        err, count = cudart.cudaGetDeviceCount()
        if int(err) != 0 or count == 0:
            raise TensorRTUnavailable("no CUDA GPU is visible")
        err, props = cudart.cudaGetDeviceProperties(0)
        gpu = f"{props.name.decode(errors='replace').strip(chr(0))} (compute capability {props.major}.{props.minor})"
    except ImportError:
        try:
            import torch

            if not torch.cuda.is_available():
                raise TensorRTUnavailable("no CUDA GPU is visible")
            major, minor = torch.cuda.get_device_capability(0)
            gpu = f"{torch.cuda.get_device_name(0)} (compute capability {major}.{minor})"
        except ImportError:
            raise TensorRTUnavailable("cannot query the GPU (neither cuda-python nor torch is installed)") from None
    return trt, gpu


def build_engine(onnx_path: Path, engine_path: Path, profile: ShapeProfile, workspace_gib: float = 4.0,
                 timing_cache: Path | None = None, version_compatible: bool = False, hardware_compatible: bool = False) -> dict:
    """Build and save one engine; returns what the manifest records about it."""
    trt, gpu = tensorrt_status()
    from polygraphy.backend.trt import CreateConfig, EngineFromNetwork, NetworkFromOnnxPath, Profile, SaveEngine

    batch_min, batch_opt, batch_max = profile.min[0], profile.opt[0], profile.max[0]
    trt_profile = Profile()
    trt_profile.add("image", min=profile.min, opt=profile.opt, max=profile.max)
    trt_profile.add("mode_override", min=(batch_min,), opt=(batch_opt,), max=(batch_max,))
    config_kwargs = dict(
        profiles=[trt_profile],
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: int(workspace_gib * (1 << 30))},
        version_compatible=version_compatible,
    )
    if hardware_compatible:
        config_kwargs["hardware_compatibility_level"] = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    if timing_cache is not None and timing_cache.exists():  # reuse tactics timed by earlier builds
        config_kwargs["load_timing_cache"] = str(timing_cache)
    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)
    engine = EngineFromNetwork(network, config=CreateConfig(**config_kwargs), save_timing_cache=str(timing_cache) if timing_cache else None)
    SaveEngine(engine, str(engine_path))()
    return {"tensorrt": trt.__version__, "gpu": gpu, "version_compatible": version_compatible, "hardware_compatible": hardware_compatible}
