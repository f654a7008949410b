"""`lens export` and `lens parity` on the shipped default checkpoint."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from typer.testing import CliRunner

from lens.cli import app
from lens.export.build import ONNX_FULL
from lens.export.graph import SAMPLED_OUTPUTS, LensGraph
from lens.export.lint import lint
from lens.export.onnx_export import export_onnx, symbolic_shapes
from lens.runtime.backends import DEFAULT_BUILD, ONNX_CPU_NETWORK, ONNX_CPU_WARP, ONNX_CPU_WHOLE
from lens.training.checkpoint import load_checkpoint, model_from_checkpoint

runner = CliRunner(env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
CHECKPOINT = DEFAULT_BUILD / "checkpoint.pt"
SAMPLES = Path(__file__).resolve().parents[1] / "samples"


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    out = tmp_path_factory.mktemp("build")
    result = runner.invoke(app, ["export", "--checkpoint", str(CHECKPOINT), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "no TensorRT engine built: TensorRT is not installed" in result.output  # one clear line
    return out


def test_export_writes_checked_graphs_and_a_manifest(build):
    manifest = json.loads((build / "manifest.json").read_text())
    assert {o["file"] for o in manifest["onnx"]} == {ONNX_FULL, ONNX_CPU_NETWORK, ONNX_CPU_WARP}
    assert not (build / ONNX_CPU_WHOLE).exists()  # the CPU graph ships as its two halves only
    assert manifest["opset"] == 18 and manifest["precision"] == "fp32"
    assert manifest["engines"] == [] and "TensorRT" in manifest["engine_note"]
    assert manifest["checkpoint"]["sha256"] and manifest["versions"]["onnxruntime"]
    assert manifest["profile"]["opt"] == [4, 3, 1367, 2048]
    shapes = symbolic_shapes(build / ONNX_FULL)
    assert shapes["image"] == ["B", 3, "H", "W"] and shapes["corrected"] == ["B", 3, "H", "W"]
    network, warp = symbolic_shapes(build / ONNX_CPU_NETWORK), symbolic_shapes(build / ONNX_CPU_WARP)
    assert network["quarter"] == ["B", 3, "h", "w"] and network["frame"] == [0, "H", "W"] and network["params"] == ["B", 8]
    assert warp["params"] == ["B", 8] and warp["frame"] == [0, "H", "W"] and warp["lattice"][:2] == ["B", 2]
    assert lint(build / ONNX_FULL) == []


def test_torch_and_onnxruntime_agree_at_two_sizes_and_batch_2(build):
    import onnxruntime as ort

    ckpt = load_checkpoint(CHECKPOINT)
    graph = LensGraph(model_from_checkpoint(ckpt), use_residual=ckpt["stage"] != "param").eval()
    session = ort.InferenceSession(str(build / ONNX_FULL), providers=["CPUExecutionProvider"])
    import cv2
    from PIL import Image

    photo = np.asarray(Image.open(SAMPLES / "rocket.jpg").convert("RGB"))
    for h, w in ((683, 1024), (1367, 2048)):
        a = cv2.resize(photo, (w, h), interpolation=cv2.INTER_AREA)
        batch = np.ascontiguousarray(np.stack([a.transpose(2, 0, 1), a[:, ::-1].transpose(2, 0, 1)]))
        modes = np.array([-1, -1], dtype=np.int64)
        ours = dict(zip(SAMPLED_OUTPUTS, session.run(None, {"image": batch, "mode_override": modes})))
        with torch.no_grad():
            ref = dict(zip(SAMPLED_OUTPUTS, (o.numpy() for o in graph(torch.from_numpy(batch), torch.from_numpy(modes)))))
        rel = np.abs(ours["params"] - ref["params"]) / np.maximum(np.abs(ref["params"]), 1.0)
        assert rel.max() < 1e-4
        assert np.array_equal(ours["mode"], ref["mode"])
        diff = np.abs(ours["corrected"].astype(int) - ref["corrected"].astype(int))
        assert (diff > 1).mean() <= 0.001


def test_parity_command_passes_and_writes_a_report(build, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(SAMPLES / "coffee.jpg", images / "coffee.jpg")
    (images / "cut.jpg").write_bytes((SAMPLES / "rocket.jpg").read_bytes()[:2000])
    result = runner.invoke(app, ["parity", "--build", str(build), "--images", str(images), "--json", str(tmp_path / "p.json")])
    assert result.exit_code == 0, result.output
    assert "not compared: cut.jpg: truncated" in result.output  # it was in the JSON only
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["passed"] and report["rows"][0]["grid_px"] < 0.01 and report["rows"][0]["modes_equal"]
    (images / "cut.jpg").unlink()
    result = runner.invoke(app, ["parity", "--build", str(build), "--images", str(images), "--backends", "torch,onnxruntime,tensorrt", "--json", str(tmp_path / "q.json")])
    assert result.exit_code == 1 and "tensorrt unavailable" in result.output
    # as a CI job or cron logs it (no terminal, no COLUMNS): the table keeps its names and numbers whole
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    logged = subprocess.run([sys.executable, "-m", "lens", "parity", "--build", str(build), "--images", str(images), "--json", str(tmp_path / "r.json")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert logged.returncode == 0, logged.stderr
    row = json.loads((tmp_path / "r.json").read_text())["rows"][0]
    assert f"coffee.jpg │ {row['size']}" in logged.stderr and f"{row['params_rel']:.2e}" in logged.stderr and f"{row['grid_px']:.2e}" in logged.stderr


def _gridsample_model(mode: str, opset: int) -> onnx.ModelProto:
    node = helper.make_node("GridSample", ["x", "g"], ["y"], mode=mode, align_corners=1)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4]), helper.make_tensor_value_info("g", TensorProto.FLOAT, [1, 4, 4, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_lint_catches_a_linear_gridsample_and_unsupported_ops():
    assert any("GridSample mode 'linear'" in p for p in lint(_gridsample_model("linear", 20)))
    assert lint(_gridsample_model("bilinear", 16)) == []
    bad = helper.make_model(helper.make_graph([helper.make_node("StringNormalizer", ["s"], ["t"])], "s",
                                              [helper.make_tensor_value_info("s", TensorProto.STRING, [1])],
                                              [helper.make_tensor_value_info("t", TensorProto.STRING, [1])]))
    assert any("StringNormalizer" in p for p in lint(bad))


def test_fp16_export_keeps_grid_and_gridsample_in_fp32(tmp_path):
    ckpt = load_checkpoint(CHECKPOINT)
    graph = LensGraph(model_from_checkpoint(ckpt), half=True).eval()
    path = export_onnx(graph, (torch.randint(0, 256, (1, 3, 96, 144), dtype=torch.uint8), torch.tensor([-1])), tmp_path / "h.onnx",
                       ["image", "mode_override"], list(SAMPLED_OUTPUTS), {"image": {0: "B", 2: "H", 3: "W"}, "mode_override": {0: "B"}})
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs and all(types.get(n.output[0]) == TensorProto.FLOAT16 for n in convs)  # network in fp16
    samplers = [n for n in model.graph.node if n.op_type == "GridSample"]
    assert samplers and all(types.get(i) == TensorProto.FLOAT for n in samplers for i in n.input)  # grid and image fp32
    assert lint(model) == []


def test_tensorrt_engine_builds_and_matches_onnxruntime(build, tmp_path):
    """Runs where TensorRT and a GPU exist; skipped here with the reason."""
    from lens.export.tensorrt_build import ShapeProfile, TensorRTUnavailable, build_engine, tensorrt_status

    try:
        tensorrt_status()
    except TensorRTUnavailable as exc:
        pytest.skip(f"TensorRT unavailable: {exc}")
    info = build_engine(build / ONNX_FULL, tmp_path / "lens.engine", ShapeProfile((1, 3, 64, 64), (2, 3, 683, 1024), (2, 3, 1367, 2048)), 2.0, tmp_path / "t.cache")
    assert (tmp_path / "lens.engine").stat().st_size > 0 and info["tensorrt"]


def test_parity_on_a_folder_that_is_not_a_build_and_export_onto_a_file_are_refused(tmp_path):
    # both stopped on a traceback (FileNotFoundError, FileExistsError after loading the model)
    result = runner.invoke(app, ["parity", "--build", str(tmp_path), "--images", str(SAMPLES)])
    assert result.exit_code == 2 and "no manifest.json (not a `lens export` build folder)" in result.output, result.output
    (tmp_path / "build").write_text("a file")
    result = runner.invoke(app, ["export", "--checkpoint", str(CHECKPOINT), "--out", str(tmp_path / "build")])
    assert result.exit_code == 2 and "is a file: name a folder for the build" in result.output.replace("\n", ""), result.output
    result = runner.invoke(app, ["export", "--checkpoint", str(CHECKPOINT), "--out", str(tmp_path / "build" / "b")])
    assert result.exit_code == 2 and "build, which is a file, not a folder" in " ".join(result.output.replace("│", " ").split()), result.output


def test_files_that_are_not_lens_checkpoints_are_named_and_refused_by_every_command(tmp_path):
    """A plain state dict, another model's config and a corrupt file: export and run stopped
    with a KeyError or RuntimeError traceback."""
    import torch

    ckpt = load_checkpoint(CHECKPOINT)
    torch.save(ckpt["model"], tmp_path / "state_dict.pt")
    torch.save({**ckpt, "model_config": {**ckpt["model_config"], "backbone": "resnet"}}, tmp_path / "other_model.pt")
    (tmp_path / "corrupt.pt").write_bytes(CHECKPOINT.read_bytes()[:1000])
    # a photo passed by mistake, and a pickle holding code: torch's refusal of both advised
    # weights_only=False ("will likely succeed"), which runs a pickle's code
    shutil.copy(SAMPLES / "coffee.jpg", tmp_path / "photo.pt")
    torch.save({"format": "lens-checkpoint/1", "hook": print}, tmp_path / "code.pt")
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(SAMPLES / "coffee.jpg", photos)
    said = {"state_dict.pt": "not a lens checkpoint", "other_model.pt": "does not match this version of lens",
            "corrupt.pt": "not a loadable lens checkpoint, damaged (PytorchStreamReader failed reading zip archive",
            "photo.pt": "photo.pt: not a lens checkpoint (one is torch.save's zip archive; this file starts with b'\\xff\\xd8",
            "code.pt": "holds pickled objects other than tensors and plain data"}
    for name, reason in said.items():
        path = str(tmp_path / name)
        for args in (["export", "--checkpoint", path, "--out", str(tmp_path / "build")], ["run", str(photos), str(tmp_path / "out"), "--checkpoint", path]):
            result = runner.invoke(app, args)
            assert result.exit_code == 2 and reason in result.output.replace("\n", ""), (args, result.output)
            assert "weights_only" not in result.output, result.output
    assert not (tmp_path / "build").exists() and not list((tmp_path / "out").glob("*.jpg"))
