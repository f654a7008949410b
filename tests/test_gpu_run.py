"""`lens run` on a GPU with the GPU JPEG codec (torch backend on CUDA + nvImageCodec): the
outputs match the CPU path's, keep size and metadata, are 4:4:4, are reproducible, and files the
GPU decoder must not take still go through the CPU path. Skipped without a CUDA GPU and
nvImageCodec (CI has neither; run on a GPU machine with `pytest -m gpu`)."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
pytest.importorskip("nvidia.nvimgcodec")

from lens.runtime.backends import DEFAULT_BUILD, OnnxRuntimeBackend, TorchBackend  # noqa: E402
from lens.runtime.pipeline import RunOptions, run  # noqa: E402

pytestmark = pytest.mark.gpu
SAMPLES = Path(__file__).resolve().parents[1] / "samples"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gpu_photos")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    for i, p in enumerate(sorted(SAMPLES.glob("*.jpg"))):
        rgb = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
        Image.fromarray(rgb).save(folder / f"a{i}.jpg", quality=92, exif=exif.tobytes() if i == 0 else b"")
    Image.fromarray(rgb[:600, :900, 0]).save(folder / "grey.jpg", quality=92)  # CPU-decoded, greyscale out
    data = (folder / "a1.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(data[:-5000])  # truncated: reported
    # bytes lost from the middle of the compressed data, the end marker kept: the CPU decoder
    # refuses it (libjpeg: premature end of data segment); the GPU path must not ship it either
    middle = (data.index(b"\xff\xda") + len(data)) // 2
    (folder / "damaged.jpg").write_bytes(data[:middle] + data[middle + 200 :])
    # a drone's padding before the end marker: decoded, and what libjpeg said of it recorded
    (folder / "stray.jpg").write_bytes(data[:-2] + bytes(7) + data[-2:])
    return folder


@pytest.fixture(scope="module")
def torch_cuda():
    return TorchBackend(DEFAULT_BUILD / "checkpoint.pt", "cuda")


def _run(src, out, backend, codec, batch=4):
    return run(src, out, backend, RunOptions(batch=batch, workers=4, codec=codec), {})


def test_gpu_codec_matches_cpu_path_and_keeps_metadata(tmp_path, photos, torch_cuda):
    summary = _run(photos, tmp_path / "gpu", torch_cuda, "gpu")
    assert summary["codec"].startswith("gpu")
    assert sorted(f["id"] for f in summary["failed"]) == ["cut", "damaged"]
    cpu = run(photos, tmp_path / "cpu", OnnxRuntimeBackend(DEFAULT_BUILD, "cpu"), RunOptions(workers=2, refine="off"), {})
    assert cpu["ok"] == summary["ok"] == 5
    assert summary["decode_warnings"] == cpu["decode_warnings"] == ["stray"]
    assert summary["jpeg_checks"]["threads"] >= 1 and cpu["jpeg_checks"] is None
    for name in ("a0.jpg", "a1.jpg", "a2.jpg", "grey.jpg"):
        with Image.open(tmp_path / "gpu" / name) as g, Image.open(tmp_path / "cpu" / name) as c, Image.open(photos / name) as src:
            assert g.size == src.size and g.mode == src.mode
            if g.mode == "RGB":
                assert JpegImagePlugin.get_sampling(g) == 0  # 4:4:4
            diff = np.abs(np.asarray(g, dtype=np.int16) - np.asarray(c, dtype=np.int16))
            assert diff.mean() < 1.5, (name, diff.mean())
            assert g.getexif().get(0x0112) == src.getexif().get(0x0112)
    records = {json.loads(line)["id"]: json.loads(line) for line in (tmp_path / "gpu" / "lens-run" / "images.jsonl").read_text().splitlines()}
    assert "gpu_decode_ms" in records["a0"]["timings_ms"] and "decode_ms" in records["grey"]["timings_ms"]
    assert "data_check_ms" in records["a0"]["timings_ms"]  # its JPEG data checked on the host


def test_a_gpu_backend_batches_16_by_default(torch_cuda):
    from lens.runtime.pipeline import batch_plan

    assert batch_plan(torch_cuda, 0)[0] == 16 and batch_plan(torch_cuda, 3)[0] == 3


def test_gpu_runs_are_byte_identical(tmp_path, photos, torch_cuda):
    _run(photos, tmp_path / "one", torch_cuda, "gpu")
    _run(photos, tmp_path / "two", torch_cuda, "gpu")
    one = {p.name: p.read_bytes() for p in (tmp_path / "one").glob("*.jpg")}
    assert one and one == {p.name: p.read_bytes() for p in (tmp_path / "two").glob("*.jpg")}


def test_cuda_graph_replay_and_fused_warp_match_the_eager_graph(torch_cuda):
    """The replayed graph's outputs are the eager graph's to the bit; its warp, one fused
    kernel (`lens.runtime.fused_warp`), is the graph's to one grey level."""
    rgb = cv2.cvtColor(cv2.imread(str(sorted(SAMPLES.glob("*.jpg"))[0])), cv2.COLOR_BGR2RGB)
    batch = torch.from_numpy(np.stack([rgb, rgb[:, ::-1].copy()])).cuda()
    modes = torch.full((2,), -1, dtype=torch.int64, device="cuda")
    assert torch_cuda.graphs is not None
    assert torch_cuda.describe()["fused_warp"], torch_cuda.describe()
    for images in (batch, batch.flip(0)):  # a capture, then a replay with other content
        with torch_cuda.lock, torch.cuda.stream(torch_cuda.stream):
            replayed = {k: v.clone() for k, v in torch_cuda.infer_device(images.contiguous()).items()}
        torch.cuda.synchronize()
        with torch.no_grad():
            eager = dict(zip(torch_cuda.names, torch_cuda.graph(images.permute(0, 3, 1, 2), modes)))  # the layout the replay sees
        assert not torch_cuda.graphs.failed, torch_cuda.graphs.failed
        for k in torch_cuda.names[:5]:
            assert torch.equal(replayed[k], eager[k]), k
        diff = (replayed["corrected_hwc"].to(torch.int16) - eager["corrected"].permute(0, 2, 3, 1).to(torch.int16)).abs()
        assert diff.max().item() <= 1 and (diff > 0).float().mean().item() < 1e-3, (diff.max().item(), (diff > 0).float().mean().item())


def test_line_fit_on_a_gpu_backend_matches_the_cpu_path(tmp_path, photos, torch_cuda):
    """`--refine lines` with the torch backend on CUDA: the pixels stay on the host (CPU codec),
    the fit replaces the GPU's warp where it is used, as on the CPU path."""
    summary = run(photos, tmp_path / "gpu", torch_cuda, RunOptions(batch=4, workers=4, refine="lines"), {})
    assert summary["codec"].startswith("cpu (the line fit") and summary["lines"]["refine"].startswith("lines")
    cpu = run(photos, tmp_path / "cpu", OnnxRuntimeBackend(DEFAULT_BUILD, "cpu"), RunOptions(workers=2, refine="lines"), {})
    assert summary["lines"]["applied"] == cpu["lines"]["applied"]
    for name in ("a0.jpg", "a1.jpg", "a2.jpg", "grey.jpg"):
        with Image.open(tmp_path / "gpu" / name) as g, Image.open(tmp_path / "cpu" / name) as c:
            diff = np.abs(np.asarray(g, dtype=np.int16) - np.asarray(c, dtype=np.int16))
            assert diff.mean() < 1.5, (name, diff.mean())


def test_a_batch_out_of_gpu_memory_is_run_image_by_image_keeping_cuda_graphs(tmp_path, torch_cuda):
    """A real out-of-memory: torch's allocator capped so that one 4000 x 3000 photo fits and a
    batch of 8 does not. The batch's photos are run one at a time and corrected as a run at
    --batch 1 corrects them, and the CUDA graphs stay on for later batches (turned off, every
    batch after the fault ran eagerly, ~436 ms per batch of 16). Last in this file: it caps
    the process's GPU memory while it runs."""
    src = tmp_path / "src"
    src.mkdir()
    rgb = cv2.resize(cv2.cvtColor(cv2.imread(str(sorted(SAMPLES.glob("*.jpg"))[0])), cv2.COLOR_BGR2RGB), (4000, 3000))
    for i in range(8):
        Image.fromarray(np.roll(rgb, 40 * i, axis=1)).save(src / f"big{i}.jpg", quality=90)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    one = run(src, tmp_path / "one", torch_cuda, RunOptions(batch=1, workers=4, codec="gpu"), {})
    assert one["ok"] == 8
    per_photo = torch.cuda.max_memory_allocated() - base
    total = torch.cuda.get_device_properties(0).total_memory
    try:
        # room for what is held now, one photo's work three times over: not for eight photos'
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(min(1.0, (torch.cuda.memory_reserved() + 3 * per_photo) / total))
        summary = run(src, tmp_path / "eight", torch_cuda, RunOptions(batch=8, workers=4, codec="gpu"), {})
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert summary["ok"] == 8 and summary["batch_retried"] == 8, summary["failed"]
    records = [json.loads(line) for line in (tmp_path / "eight" / "lens-run" / "images.jsonl").read_text().splitlines()]
    assert all("out of memory" in r["batch_retry"].lower() for r in records), records[0].get("batch_retry")
    for i in range(8):
        assert (tmp_path / "eight" / f"big{i}.jpg").read_bytes() == (tmp_path / "one" / f"big{i}.jpg").read_bytes()
    assert torch_cuda.graphs is not None and not torch_cuda.graphs.failed, torch_cuda.graphs.failed
