"""Inference backends behind one interface, and the choice between them.

Every backend runs an exported graph (`lens.export.graph`) and returns its outputs by name:
``params``, ``flow``, ``safety``, ``mode``, ``violations``, then either ``corrected`` (GPU
backends: `LensGraph` samples a uint8 batch ``(B, 3, H, W)`` given to `Backend.infer`) or
``lattice`` (CPU: `LensMapsGraph` reads every other pixel and row of the photos given to
`Backend.infer_lattice`, and the runtime samples with OpenCV; ONNX Runtime also runs its two
halves on their own, `infer_network` and `infer_warp`, so that the line fit can come between).

Choice with ``--backend auto``: TensorRT when the build has an engine whose manifest matches
this GPU and TensorRT version; else ONNX Runtime's CUDA provider; else ONNX Runtime on the CPU.
The torch backend (the reference) is used only when asked for. Nothing here imports torch
unless the torch backend is asked for.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_BUILD = Path(__file__).resolve().parents[1] / "assets" / "models" / "default"
ONNX_FULL, ENGINE, MANIFEST = "lens.onnx", "lens.engine", "manifest.json"
# The CPU graph (`lens.export.graph.LensMapsGraph`) is stored as two halves (`lens export` cuts
# it where the network's outputs enter the geometry): the network, and the warp (the three
# modes' safety statistics, the mode chosen and its warp on a lattice). Run one after the other
# they give the whole graph's outputs bit for bit; the warp half (~6 of its ~15 ms at
# 2048 x 1367) is skipped where the line fit replaces the network's warp.
ONNX_CPU_NETWORK, ONNX_CPU_WARP = "lens_cpu_network.onnx", "lens_cpu_warp.onnx"
ONNX_CPU_WHOLE = "lens_cpu.onnx"  # the one-file CPU graph of builds exported before the cut
LATTICE_INPUTS = ("quarter", "frame", "mode_override")  # the CPU graph's, and its network half's
NETWORK_OUTPUTS = ("params", "flow")
WARP_INPUTS = ("params", "flow", "frame", "mode_override")
WARP_OUTPUTS = ("safety", "mode", "violations", "lattice")


class BackendUnavailable(RuntimeError):
    pass


def read_manifest(build: Path) -> dict:
    path = build / MANIFEST
    if not path.is_file():
        raise BackendUnavailable(f"{build}: no {MANIFEST} (not a `lens export` build folder)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BackendUnavailable(f"{path} is not valid JSON ({exc}): export the build again") from None
    if not isinstance(manifest, dict):
        raise BackendUnavailable(f"{path} is not a `lens export` manifest: export the build again")
    return manifest


def _onnx_session(ort, build: Path, manifest: dict, name: str, options, providers: list[str]):
    """An ONNX Runtime session of the build's graph ``name``, once its bytes are those its
    manifest lists (the run summary reports those hashes as the model that made the outputs): a
    partly copied or edited graph is refused, naming it, instead of running or crashing."""
    import hashlib

    path = build / name
    listed = {o.get("file"): o.get("sha256") for o in manifest.get("onnx", []) if isinstance(o, dict)}
    again = f"export it again: lens export --checkpoint {build / 'checkpoint.pt'} --out {build}"
    data = path.read_bytes()
    if listed.get(name) and hashlib.sha256(data).hexdigest() != listed[name]:
        raise BackendUnavailable(f"{path} is not the graph its manifest lists (sha256 differs: a partial copy or an edited file); {again}")
    try:
        return ort.InferenceSession(data, options, providers=providers)
    except Exception as exc:  # ONNX Runtime's own exception types (InvalidProtobuf, Fail, ...)
        raise BackendUnavailable(f"ONNX Runtime cannot load {path}: {str(exc).splitlines()[0]}; {again}") from None


@dataclass
class Choice:
    backend: "Backend"
    reason: str


class Backend:
    name = "backend"
    device = "cpu"
    samples_on_device = False  # True: `infer` outputs "corrected"; False: `infer_lattice` outputs "lattice"
    batch_invariant = True  # results for an image do not depend on what else is in its batch
    device_resident = False  # True: takes and returns GPU tensors (`TorchBackend.infer_device`)
    max_batch: int | None = None  # the most images one inference takes (a TensorRT engine's profile), None: no limit

    def infer(self, images: np.ndarray, mode_override: int = -1) -> dict[str, np.ndarray]:
        """``(B, 3, H, W)`` uint8 photos -> outputs with ``corrected`` (GPU backends)."""
        raise NotImplementedError

    def infer_lattice(self, images: np.ndarray, mode_override: int = -1) -> dict[str, np.ndarray]:
        """``(B, H, W, 3)`` uint8 photos (any strides) -> outputs with ``lattice`` (CPU backends)."""
        raise NotImplementedError

    #: True where `infer_network` and `infer_warp` run the two halves of `infer_lattice`
    splits_lattice = False

    def infer_network(self, images: np.ndarray, mode_override: int = -1) -> dict[str, np.ndarray]:
        """The first half of `infer_lattice`: ``params`` and ``flow`` only."""
        raise NotImplementedError

    def infer_warp(self, network: dict[str, np.ndarray], height: int, width: int, mode_override: int = -1) -> dict[str, np.ndarray]:
        """The second half of `infer_lattice`: from `infer_network`'s outputs for photos of
        ``height x width``, ``safety``, ``mode``, ``violations`` and ``lattice``."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"backend": self.name, "device": self.device}

    def refuses(self, height: int, width: int) -> str | None:
        """Why this backend cannot take photos of ``height x width`` (a TensorRT engine's shape
        profile), or None. `fallback` runs those."""
        return None

    def fallback(self) -> "Choice":
        """The backend that runs the photos this one `refuses`, and why that one; raises
        `BackendUnavailable` where there is none."""
        raise BackendUnavailable(f"{self.name} has no other backend to hand photos to")


def lattice_feed(images: np.ndarray, mode_override) -> dict[str, np.ndarray]:
    """The CPU graph's inputs (`lens.export.graph.LensMapsGraph`) for ``(B, H, W, 3)`` uint8
    photos: every other pixel and row, channels first (one copy of a quarter of the pixels),
    and the empty ``frame`` whose shape is the photos' size."""
    batch, height, width = images.shape[:3]
    return {"quarter": np.ascontiguousarray(images[:, ::2, ::2].transpose(0, 3, 1, 2)), **_frame_feed(batch, height, width, mode_override)}


def _frame_feed(batch: int, height: int, width: int, mode_override) -> dict[str, np.ndarray]:
    return {"frame": np.empty((0, height, width), np.uint8), "mode_override": np.broadcast_to(np.asarray(mode_override, np.int64), (batch,)).copy()}


def warp_feed(network: dict[str, np.ndarray], height: int, width: int, mode_override) -> dict[str, np.ndarray]:
    """The warp half's inputs: the network half's outputs and the photos' size."""
    return {**{k: network[k] for k in NETWORK_OUTPUTS}, **_frame_feed(len(network["params"]), height, width, mode_override)}


def run_cpu_halves(network, warp, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The whole CPU graph's outputs from its two ONNX Runtime sessions, for a `lattice_feed`."""
    out = dict(zip(NETWORK_OUTPUTS, network.run(list(NETWORK_OUTPUTS), feed)))
    given = {**feed, **out}
    return {**out, **dict(zip(WARP_OUTPUTS, warp.run(list(WARP_OUTPUTS), {k: given[k] for k in WARP_INPUTS})))}


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, build: Path, device: str):
        from lens.runtime.onnxruntime_install import conflict_message

        problem = conflict_message()
        if problem:
            raise BackendUnavailable(problem)
        import onnxruntime as ort

        self.build = build
        self.device = device
        manifest = read_manifest(build)  # its graphs' hashes, checked as each is loaded
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if device == "cuda":
            if hasattr(ort, "preload_dlls"):
                try:
                    ort.preload_dlls()  # finds CUDA/cuDNN libraries installed by pip (torch's, nvidia-*)
                except Exception:
                    pass
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable("ONNX Runtime has no CUDA provider (install onnxruntime-gpu, see README)")
            self.samples_on_device = True
            self.batch_invariant = False
            self.session = _onnx_session(ort, build, manifest, ONNX_FULL, options, ["CUDAExecutionProvider"])
            if "CUDAExecutionProvider" not in self.session.get_providers():
                raise BackendUnavailable("ONNX Runtime's CUDA provider failed to initialise (driver or CUDA libraries)")
            self.output_names = [o.name for o in self.session.get_outputs()]
        else:
            # One thread per inference: the pipeline runs one image per worker thread, which
            # keeps results independent of --batch and --workers (byte-identical outputs).
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            missing = [n for n in (ONNX_CPU_NETWORK, ONNX_CPU_WARP) if not (build / n).is_file()]
            again = f"export it again: lens export --checkpoint {build / 'checkpoint.pt'} --out {build}"
            if missing and (build / ONNX_CPU_WHOLE).is_file():
                # builds exported before the CPU graph was cut in two (or before it took every
                # other pixel and returned a lattice)
                raise BackendUnavailable(f"{build} holds the CPU graph as one file ({ONNX_CPU_WHOLE}), not {ONNX_CPU_NETWORK} and {ONNX_CPU_WARP}: "
                                         f"it was exported by an older lens; {again}")
            if missing:
                raise BackendUnavailable(f"{build} has no {' or '.join(missing)}: not a complete `lens export` build; {again}")
            self.network = _onnx_session(ort, build, manifest, ONNX_CPU_NETWORK, options, ["CPUExecutionProvider"])
            self.warp = _onnx_session(ort, build, manifest, ONNX_CPU_WARP, options, ["CPUExecutionProvider"])
            self.splits_lattice = True

    def infer(self, images, mode_override=-1):
        modes = np.full((images.shape[0],), mode_override, dtype=np.int64)
        return dict(zip(self.output_names, self.session.run(None, {"image": images, "mode_override": modes})))

    def infer_lattice(self, images, mode_override=-1):
        return run_cpu_halves(self.network, self.warp, lattice_feed(images, mode_override))

    def infer_network(self, images, mode_override=-1):
        return dict(zip(NETWORK_OUTPUTS, self.network.run(list(NETWORK_OUTPUTS), lattice_feed(images, mode_override))))

    def infer_warp(self, network, height, width, mode_override=-1):
        return dict(zip(WARP_OUTPUTS, self.warp.run(list(WARP_OUTPUTS), warp_feed(network, height, width, mode_override))))


class TensorRTBackend(Backend):
    name = "tensorrt"
    device = "cuda"
    samples_on_device = True
    batch_invariant = False

    def __init__(self, build: Path, manifest: dict):
        from lens.export.tensorrt_build import TensorRTUnavailable, tensorrt_status

        engines = manifest.get("engines") or []
        if not engines:
            raise BackendUnavailable(manifest.get("engine_note") or "the build has no TensorRT engine")
        try:
            trt, gpu = tensorrt_status()
        except TensorRTUnavailable as exc:
            raise BackendUnavailable(str(exc)) from None
        engine = engines[0]
        self.build = build
        self.profile = engine.get("profile") or {}
        self.max_batch = self.profile.get("max", [None])[0]
        if engine["tensorrt"] != trt.__version__ and not engine.get("version_compatible"):
            raise BackendUnavailable(f"engine built with TensorRT {engine['tensorrt']}, this is {trt.__version__}")
        if engine["gpu"] != gpu and not engine.get("hardware_compatible"):
            raise BackendUnavailable(f"engine built for {engine['gpu']}, this GPU is {gpu}")
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        self.runner = TrtRunner(EngineFromBytes(BytesFromPath(str(build / ENGINE))))
        self.runner.activate()
        self.lock = threading.Lock()  # one execution context

    def refuses(self, height, width):
        """An engine takes the image sizes of its shape profile only (`lens export
        --min-shape/--max-shape`): by default 256 x 256 to 4000 x 3000 landscape, which leaves
        out 24 MP DSLR photos (6000 x 4000) and portrait frames (3000 x 4000)."""
        if not self.profile:
            return None
        (_, _, h0, w0), (_, _, h1, w1) = self.profile["min"][:4], self.profile["max"][:4]
        if h0 <= height <= h1 and w0 <= width <= w1:
            return None
        return f"{width}x{height} is outside the TensorRT engine's shape profile ({w0}x{h0} to {w1}x{h1}, width x height)"

    def fallback(self):
        return select_backend("auto", "auto", self.build, None, tensorrt=False)

    def infer(self, images, mode_override=-1):
        with self.lock:
            out = self.runner.infer({"image": images, "mode_override": np.full((images.shape[0],), mode_override, dtype=np.int64)})
            return {k: np.array(v) for k, v in out.items()}


class TorchBackend(Backend):
    """The reference: the same `LensGraph`, run by torch from a checkpoint."""

    name = "torch"

    def __init__(self, checkpoint: Path, device: str):
        try:
            import torch
        except ImportError:
            raise BackendUnavailable("the torch backend needs torch (pip install '.[train]')") from None
        from lens.export.graph import LensGraph, LensMapsGraph
        from lens.training.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint

        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable("torch sees no CUDA GPU")
        try:
            ckpt = load_checkpoint(checkpoint)
            model = model_from_checkpoint(ckpt)
        except CheckpointError as exc:
            raise BackendUnavailable(str(exc)) from None
        self.torch = torch
        self.device = device
        self.samples_on_device = device == "cuda"
        self.batch_invariant = device != "cuda"
        kind = LensGraph if self.samples_on_device else LensMapsGraph
        self.graph = kind(model, use_residual=ckpt["stage"] != "param").eval().to(device)
        self.names = ("params", "flow", "safety", "mode", "violations", "corrected" if self.samples_on_device else "lattice")
        self.lock = threading.Lock()
        # On CUDA the pipeline hands over GPU tensors (`run_device`) or channels-last host
        # batches (`infer_hwc`): no CPU transposes, and uint8 (not float) crosses PCIe.
        self.device_resident = device == "cuda"
        self.graphs = None
        self.warp_note = None  # why the fused warp is not used, where it is not
        if self.device_resident:
            # Deterministic convolutions: autotuning may pick a different algorithm per run,
            # which changed output bytes between two runs on an H200.
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
            # Its own stream: the JPEG codec's decodes and encodes (`lens.runtime.gpu_jpeg`,
            # streams of their own) overlap the graph instead of queueing behind it, and a
            # host copy of the outputs waits for this batch's work only.
            self.stream = torch.cuda.Stream()
            from lens.runtime import fused_warp

            self.warp_note = "turned off (LENS_FUSED_WARP=0)" if os.environ.get("LENS_FUSED_WARP", "1") == "0" else fused_warp.unavailable()
            self._decide = self._graph_decisions if self.warp_note is None else self._graph_whole
            if os.environ.get("LENS_CUDA_GRAPHS", "1") != "0":
                from lens.runtime.cuda_graphs import CapturedGraphs

                self.graphs = CapturedGraphs(self._decide)

    def _graph_decisions(self, images, modes):
        """``(B, H, W, 3)`` uint8 -> the graph's first outputs and the fused warp's inputs."""
        from lens.runtime.fused_warp import warp_coefficients

        *outs, params, camera, flow = self.graph.decisions(images.permute(0, 3, 1, 2), modes)
        return (*outs, warp_coefficients(params, camera, images.shape[1], images.shape[2]), flow)

    def _graph_whole(self, images, modes):
        """``(B, H, W, 3)`` uint8 -> the whole graph's outputs, ``corrected`` ``(B, H, W, 3)``."""
        *outs, corrected = self.graph(images.permute(0, 3, 1, 2), modes)
        return (*outs, corrected.permute(0, 2, 3, 1))

    def describe(self) -> dict:
        out = {**super().describe(), "cuda_graphs": self.graphs is not None and not self.graphs.failed}
        if self.graphs is not None and self.graphs.failed:
            out["cuda_graphs_note"] = self.graphs.failed
        if self.device_resident:
            out["fused_warp"] = self.warp_note is None
            if self.warp_note:
                out["fused_warp_note"] = self.warp_note
        return out

    def infer(self, images, mode_override=-1):
        t = self.torch
        with self.lock, t.no_grad():
            x = t.from_numpy(images).to(self.device)
            outs = self.graph(x, t.full((images.shape[0],), mode_override, dtype=t.int64, device=self.device))
        return {n: o.cpu().numpy() for n, o in zip(self.names, outs)}

    def infer_lattice(self, images, mode_override=-1):
        t = self.torch
        feed = lattice_feed(images, mode_override)
        with self.lock, t.no_grad():
            outs = self.graph(*(t.from_numpy(feed[k]) for k in LATTICE_INPUTS))
        return {n: o.numpy() for n, o in zip(self.names, outs)}

    def infer_device(self, images, mode_override=-1) -> dict:
        """``(B, H, W, 3)`` uint8 CUDA tensor -> outputs as CUDA tensors on this backend's
        stream, ``corrected_hwc`` ``(B, H, W, 3)`` a tensor of its own (the others may be a
        replayed CUDA graph's, overwritten by its next call). The caller holds ``self.lock``
        and runs on ``self.stream``, where ``images`` must be ready."""
        t = self.torch
        modes = t.full((images.shape[0],), mode_override, dtype=t.int64, device=images.device)
        with t.no_grad():
            outs = self.graphs(images, modes) if self.graphs is not None else self._decide(images, modes)
            named = dict(zip(self.names[:5], outs[:5]))
            if self.warp_note is None:
                from lens.runtime.fused_warp import fused_warp

                named["corrected_hwc"] = fused_warp(images, outs[5], outs[6])
            else:
                named["corrected_hwc"] = outs[5].clone(memory_format=t.contiguous_format)
        return named

    def run_device(self, images: list, mode_override=-1, ready=None) -> tuple[dict, object]:
        """Same-size photos, each a ``(H, W, 3)`` uint8 CUDA tensor or host array, with
        ``ready`` a CUDA event after which the CUDA ones may be read -> (host outputs, the
        corrected ``(B, H, W, 3)`` CUDA tensor, complete)."""
        t = self.torch
        with self.lock, t.cuda.stream(self.stream):
            if ready is not None:
                self.stream.wait_event(ready)
            batch = t.stack([x if isinstance(x, t.Tensor) else t.from_numpy(x).to(self.device) for x in images])
            out = self.infer_device(batch, mode_override)
            corrected = out.pop("corrected_hwc")
            host = {k: v.cpu().numpy() for k, v in out.items()}  # waits for this stream: the warp is done too
        return host, corrected

    def infer_hwc(self, images, mode_override=-1):
        """``(B, H, W, 3)`` uint8 host batch -> host outputs, ``corrected_hwc`` ``(B, H, W, 3)``
        (CUDA only)."""
        t = self.torch
        x = t.from_numpy(images).pin_memory()  # pinned: the copy runs at full PCIe speed
        with self.lock, t.cuda.stream(self.stream):
            out = self.infer_device(x.to(self.device, non_blocking=True), mode_override)
            return {k: v.cpu().numpy() for k, v in out.items()}


def _gpu_visible() -> bool:
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return any(Path(p).exists() for p in ("/dev/nvidia0", "/proc/driver/nvidia/version"))


def select_backend(backend: str, device: str, build: Path | None, checkpoint: Path | None, tensorrt: bool = True) -> Choice:
    """The backend to run and one line saying which and why; ``tensorrt`` False: the choice
    after TensorRT (`TensorRTBackend.fallback`)."""
    if backend not in ("auto", "tensorrt", "onnxruntime", "torch"):
        raise BackendUnavailable(f"unknown backend {backend!r}")
    if device not in ("auto", "cuda", "cpu"):
        raise BackendUnavailable(f"unknown device {device!r}")
    if backend == "torch" or (checkpoint is not None and build is None):
        if checkpoint is None:
            raise BackendUnavailable("the torch backend needs --checkpoint")
        dev = "cuda" if device in ("auto", "cuda") and _torch_cuda() else "cpu"
        if device == "cuda" and dev != "cuda":
            raise BackendUnavailable("torch sees no CUDA GPU")
        return Choice(TorchBackend(checkpoint, dev), f"torch on {dev}: reference backend from {checkpoint.name}")
    build = build or DEFAULT_BUILD
    manifest = read_manifest(build)
    gpu = device in ("auto", "cuda") and _gpu_visible()
    if device == "cuda" and not gpu:
        raise BackendUnavailable("--device cuda: no NVIDIA GPU is visible")
    why_not = []
    if backend in ("auto", "tensorrt") and gpu and tensorrt:
        try:
            return Choice(TensorRTBackend(build, manifest), f"tensorrt: engine {ENGINE} matches this GPU and TensorRT")
        except BackendUnavailable as exc:
            if backend == "tensorrt":
                raise
            why_not.append(f"no TensorRT ({exc})")
    elif backend == "tensorrt":
        raise BackendUnavailable("TensorRT needs a GPU and none is visible")
    if gpu:
        try:
            return Choice(OnnxRuntimeBackend(build, "cuda"), "onnxruntime CUDA provider" + (f": {'; '.join(why_not)}" if why_not else ""))
        except BackendUnavailable as exc:
            if backend == "onnxruntime" and device == "cuda":
                raise
            why_not.append(f"no CUDA provider ({exc})")
        # A GPU with a CUDA torch but neither TensorRT nor onnxruntime-gpu: the reference
        # graph on the GPU beats the CPU by far.
        if backend == "auto" and (build / "checkpoint.pt").is_file() and _torch_cuda():
            return Choice(TorchBackend(build / "checkpoint.pt", "cuda"), "torch on cuda: " + "; ".join(why_not))
        if device == "cuda":
            raise BackendUnavailable("; ".join(why_not))
    reason = "onnxruntime on the CPU" + (": " + "; ".join(why_not) if why_not else ": no GPU visible" if device == "auto" else "")
    return Choice(OnnxRuntimeBackend(build, "cpu"), reason)


def _torch_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False
