"""`lens run` on the embedded default model: bad input, SIGKILL + resume, determinism, lean."""
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lens.cli import app
from lens.runtime.backends import DEFAULT_BUILD, ONNX_CPU_NETWORK, ONNX_CPU_WARP, ONNX_CPU_WHOLE, ONNX_FULL

runner = CliRunner(env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def _small(name: str, width: int = 384) -> np.ndarray:
    img = cv2.cvtColor(cv2.imread(str(SAMPLES / name)), cv2.COLOR_BGR2RGB)
    return cv2.resize(img, (width, round(img.shape[0] * width / img.shape[1])), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for i, name in enumerate(["rocket.jpg", "coffee.jpg", "astronaut.jpg"] * 3):
        Image.fromarray(_small(name, 320 + 32 * (i % 3))).save(folder / f"p{i:02d}.jpg", quality=92)
    return folder


def _run(*args):
    return runner.invoke(app, ["run", *map(str, args)], catch_exceptions=False)


def _outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_default_model_corrects_a_folder_and_records_everything(tmp_path, photos):
    out = tmp_path / "out"
    result = _run(photos, out)
    assert result.exit_code == 0, result.output
    assert "backend: onnxruntime on the CPU" in result.output
    assert sorted(_outputs(out)) == sorted(p.name for p in photos.iterdir())
    for p in photos.iterdir():
        with Image.open(p) as a, Image.open(out / p.name) as b:
            assert a.size == b.size and b.format == "JPEG"
    records = [json.loads(line) for line in (out / "lens-run" / "images.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == sorted(r["id"] for r in records)
    for r in records:
        assert r["status"] == "ok" and r["mode"] in ("hybrid", "param_only", "param_only_conservative")
        assert set(r["params"]) == {"k1", "k2", "k3", "p1", "p2", "focal", "cx", "cy"}
        # a photo whose lens the line fit replaced carries the applied warp's statistics only
        applied = r.get("lines", {}).get("applied")
        assert set(r["safety"]) == ({"param_only"} if applied else {"hybrid", "param_only", "param_only_conservative"})
        assert {"decode_ms", "infer_ms", "warp_ms", "encode_ms"} <= set(r["timings_ms"])
    summary = json.loads((out / "lens-run" / "summary.json").read_text())
    assert summary["ok"] == 9 and not summary["failed"]
    assert summary["model"]["checkpoint_sha256"] and summary["versions"]["onnxruntime"] and summary["versions"]["simplejpeg"]
    assert sum(summary["modes"].values()) == 9
    # the corrected folder passes QA as it stands: the portrait's own black corner is not fill
    qa = runner.invoke(app, ["qa", str(out), "--inputs", str(photos), "--json", str(tmp_path / "qa.json")])
    assert qa.exit_code == 0, qa.output
    assert "black bottom-right corner" in qa.output


def test_originals_are_never_overwritten_by_their_corrections(tmp_path, photos):
    folder = tmp_path / "shoot"
    folder.mkdir()
    for p in list(photos.iterdir())[:2]:
        (folder / p.name).write_bytes(p.read_bytes())
    before = _outputs(folder)
    result = runner.invoke(app, ["run", str(folder), str(folder)])
    assert result.exit_code == 2 and "input folder" in result.output
    one = sorted(folder.iterdir())[0]
    result = _run(one, folder)  # one file into its own folder
    assert result.exit_code == 1 and "would replace this input" in result.output
    assert _outputs(folder) == before
    # an earlier run's output as the input: its photos were corrected a second time, silently
    assert _run(folder, tmp_path / "fine").exit_code == 0  # the refused run above left only its failure in folder/lens-run
    corrected = tmp_path / "corrected"
    assert _run(photos, corrected).exit_code == 0
    result = runner.invoke(app, ["run", str(corrected), str(tmp_path / "twice")])
    assert result.exit_code == 2 and "an earlier lens run's output" in result.output.replace("\n", " ")
    assert not (tmp_path / "twice").exists()


def test_a_photo_whose_name_is_as_long_as_the_file_system_allows_is_corrected(tmp_path, photos):
    # 250 bytes (2-byte letters): its output's temporary name must not grow past the 255 allowed
    name = "é" * 123 + ".jpg"
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / name).write_bytes(next(photos.glob("*.jpg")).read_bytes())
    result = _run(folder, tmp_path / "out")
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "out" / name) as img:
        img.load()
    assert not list((tmp_path / "out").glob(".*.part"))


def test_photos_whose_names_are_not_utf8_are_corrected_and_reported(tmp_path, photos):
    """Latin-1 names from an old archive or a Windows share ("Küche" as the byte 0xFC): the
    run stopped with a traceback at the first such output, leaving no summary."""
    folder = tmp_path / "in"
    folder.mkdir()
    good, bad = os.fsdecode(b"K\xfcche.jpg"), os.fsdecode(b"Fl\xfcr.jpg")
    try:
        (folder / good).write_bytes(next(photos.glob("*.jpg")).read_bytes())
    except (OSError, UnicodeError):
        pytest.skip("this file system takes UTF-8 names only")
    (folder / bad).write_bytes(next(photos.glob("*.jpg")).read_bytes()[:500])  # truncated
    (folder / "plain.jpg").write_bytes(next(photos.glob("*.jpg")).read_bytes())
    out = tmp_path / "out"
    result = _run(folder, out)
    assert result.exit_code == 1, result.output  # the truncated one failed, nothing else
    summary = json.loads((out / "lens-run" / "summary.json").read_text())
    assert summary["ok"] == 2 and [f["id"] for f in summary["failed"]] == [bad[:-4]]
    with Image.open(out / good) as img:  # the output carries the input's own name bytes
        img.load()
    # lens qa's report names it (such a name is not a valid submission id, so QA fails)
    qa = runner.invoke(app, ["qa", str(out), "--inputs", str(folder), "--json", str(tmp_path / "qa.json"), "--report", str(tmp_path / "qa.html")])
    assert qa.exit_code == 1 and "bad_name" in qa.output
    assert "K\\udcfcche.jpg" in (tmp_path / "qa.html").read_text()
    # lens score reads it too (OpenCV's imread of such a name killed the process): in a child
    # process, so that a crash fails this test instead of the test session
    score = subprocess.run([sys.executable, "-m", "lens", "score", str(out), str(out), "--csv", str(tmp_path / "s.csv")], capture_output=True)
    assert score.returncode == 0, score.stderr[-2000:]
    assert b"K\xfcche," in (tmp_path / "s.csv").read_bytes()


def test_an_output_named_like_an_image_file_is_refused_before_anything_is_written(tmp_path, photos):
    """`lens run a.jpg b.jpg` would have made a folder b.jpg/ holding a.jpg."""
    result = _run(photos / "p00.jpg", tmp_path / "fixed.jpg")
    assert result.exit_code == 2 and "looks like an image file name" in result.output
    assert "corrected/p00.jpg" in result.output
    assert not (tmp_path / "fixed.jpg").exists()


def test_inputs_sharing_an_output_name_fail_visibly_and_the_named_one_keeps_it(tmp_path, photos):
    """'a.jpeg' and 'a.jpg' both correct to 'a.jpg', as do 'b_original.jpg' and 'b.jpg': one
    of each pair is corrected, the other is a counted failure (exit code 1), not a record
    overwritten by its neighbour's. 'c.png' (kept a PNG) and 'c.tif' (written 'c.jpg') are both
    image 'c': both were written and one record overwrote the other (3 of 4 images counted)."""
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(photos / "p00.jpg", src / "a.jpeg")
    shutil.copy(photos / "p01.jpg", src / "a.jpg")
    shutil.copy(photos / "p02.jpg", src / "b.jpg")
    shutil.copy(photos / "p03.jpg", src / "b_original.jpg")
    Image.open(photos / "p04.jpg").save(src / "c.png")
    Image.open(photos / "p05.jpg").save(src / "c.tif")
    out = tmp_path / "out"
    result = _run(src, out)
    assert result.exit_code == 1, result.output
    assert "3 failed" in result.output
    assert sorted(_outputs(out)) == ["a.jpg", "b.jpg", "c.png"]
    for name, source in (("a.jpg", "p01.jpg"), ("b.jpg", "p02.jpg")):  # the input already named so
        with Image.open(out / name) as corrected, Image.open(photos / source) as original:
            assert corrected.size == original.size
    summary = json.loads((out / "lens-run" / "summary.json").read_text())
    assert summary["images"] == 6 and summary["ok"] == 3
    assert {Path(f["source"]).name: f["reason"] for f in summary["failed"]} == {
        "a.jpeg": "output name a.jpg already taken by a.jpg", "b_original.jpg": "output name b.jpg already taken by b.jpg",
        "c.tif": "image c already taken by c.png (corrected as c.png; this one would be c.jpg)"}
    records = {r["id"]: r for r in map(json.loads, (out / "lens-run" / "images.jsonl").read_text().splitlines())}
    assert records["a"]["source"].endswith("a.jpg") and records["a.jpeg"]["status"] == "failed"


def test_forced_modes_are_applied_and_recorded(tmp_path, photos):
    src = tmp_path / "one"
    src.mkdir()
    (src / "a.jpg").write_bytes((photos / "p00.jpg").read_bytes())
    outs = {}
    for mode in ("param_only", "param_only_conservative"):
        assert _run(src, tmp_path / mode, "--mode", mode).exit_code == 0
        rec = json.loads((tmp_path / mode / "lens-run" / "images.jsonl").read_text())
        assert rec["mode"] == mode and "forced" in rec["reasons"]
        outs[mode] = (tmp_path / mode / "a.jpg").read_bytes()
    assert outs["param_only"] != outs["param_only_conservative"]


def _bad_inputs(folder: Path) -> dict[str, str]:
    """name -> what must happen: "ok" or a substring of the failure reason."""
    folder.mkdir()
    base = _small("rocket.jpg", 256)
    expect = {}
    (folder / "zero.jpg").write_bytes(b"")
    expect["zero"] = "empty file"
    Image.fromarray(base).save(folder / "full.jpg")
    data = (folder / "full.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    expect["truncated"] = "truncated"
    # bytes cut out of the compressed data, the end marker kept: libjpeg makes the rest grey
    middle = (data.index(b"\xff\xda") + len(data)) // 2
    (folder / "damaged.jpg").write_bytes(data[:middle] + data[middle + 200 :])
    expect["damaged"] = "corrupt JPEG data: premature end of data segment"
    # stray bytes before the end marker: a camera's padding, or damage; corrected, and said
    (folder / "padded.jpg").write_bytes(data[:-2] + bytes(9) + data[-2:])
    expect["padded"] = "ok"
    expect["full"] = "ok"
    (folder / "text.jpg").write_text("definitely not a JPEG")
    expect["text"] = "not a readable image"
    Image.fromarray(base).convert("CMYK").save(folder / "cmyk.jpg")
    expect["cmyk"] = "ok"
    Image.fromarray(base).convert("L").save(folder / "grey.png")
    expect["grey"] = "ok"
    Image.fromarray(base).convert("P").save(folder / "palette.png")
    expect["palette"] = "ok"
    Image.fromarray((np.asarray(Image.fromarray(base).convert("L")).astype(np.uint16) * 257)).save(folder / "sixteen.png")
    expect["sixteen"] = "ok"
    rgba = np.dstack([base, np.full(base.shape[:2], 200, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    expect["alpha"] = "ok"
    Image.fromarray(rgba, "RGBA").save(folder / "cutout.tif")  # written as a JPEG: no alpha there
    expect["cutout"] = "ok"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(base).save(folder / "rotated.jpg", exif=exif.tobytes())
    expect["rotated"] = "ok"
    Image.fromarray(base[:8, :8]).save(folder / "tiny.png")
    expect["tiny"] = "ok"
    # a 1:3 strip: the lens model's corners would lie 1.58 focal lengths out, where it bent the
    # default model's straight edges; a 1:2.4 portrait is still a camera's frame
    Image.fromarray(np.ascontiguousarray(np.repeat(base[:, :60], 2, axis=0)[:180])).save(folder / "strip.jpg")
    expect["strip"] = "too tall to correct: 60x180 (1:3.0)"
    Image.fromarray(np.ascontiguousarray(np.repeat(base[:, :70], 2, axis=0)[:168])).save(folder / "tall.jpg")
    expect["tall"] = "ok"
    Image.fromarray(np.tile(base[:64], (1, 130, 1))).save(folder / "panorama.png")  # 33280 x 64
    expect["panorama"] = "too large to warp: 33280x64 has a side over 32766 px"
    # a phone's JPEG with a second image after the main one (MPF: a gain map, depth map or
    # preview), and a two-page TIFF
    Image.fromarray(base).save(folder / "phone.jpg", format="MPO", save_all=True, append_images=[Image.fromarray(base[:64, :64])])
    expect["phone"] = "ok"
    Image.fromarray(base).save(folder / "pages.tif", save_all=True, append_images=[Image.fromarray(base[::-1])])
    expect["pages"] = "ok"
    Image.new("1", (20000, 20000)).save(folder / "bomb.png")
    expect["bomb"] = "too large"
    # scientific TIFFs: float samples, and 32-bit integers that scaled as 16 bits came out white
    Image.fromarray(np.asarray(Image.fromarray(base).convert("L"), np.float32) / 255, "F").save(folder / "float.tif")
    expect["float"] = "floating-point samples are not supported"
    Image.fromarray(np.asarray(Image.fromarray(base).convert("L"), np.int32) * 2**23, "I").save(folder / "int32.tif")
    expect["int32"] = "32-bit integer samples outside 0..65535"
    # a link to a photo that is gone (a moved card, an unmounted share): it vanished unnamed
    (folder / "gone.jpg").symlink_to(folder / "moved-away.jpg")
    expect["gone"] = "cannot open: No such file or directory (a link to"
    # links to what is not a file: a device was an "empty file", a named pipe would block the read
    (folder / "device.jpg").symlink_to("/dev/zero")
    expect["device"] = "not a file but a character device (a link to /dev/zero)"
    os.mkfifo(folder.parent / "pipe")
    (folder / "pipe.jpg").symlink_to(folder.parent / "pipe")
    expect["pipe"] = "not a file but a named pipe"
    return expect


def test_bad_input_never_stops_the_run(tmp_path):
    expect = _bad_inputs(tmp_path / "in")
    out = tmp_path / "out"
    result = _run(tmp_path / "in", out)
    assert result.exit_code == 1
    records = {json.loads(l)["id"]: json.loads(l) for l in (out / "lens-run" / "images.jsonl").read_text().splitlines()}
    assert set(records) == set(expect)
    for image_id, want in expect.items():
        rec = records[image_id]
        if want == "ok":
            assert rec["status"] == "ok", (image_id, rec.get("error"))
            src = next((tmp_path / "in").glob(f"{image_id}.*"))
            with Image.open(src) as a, Image.open(rec["output"]) as b:
                assert a.size == b.size
        else:
            assert rec["status"] == "failed" and want in rec["error"], (image_id, rec.get("error"))
            assert f"{image_id}." in result.output  # named on the console
    with Image.open(out / "grey.png") as g:
        assert g.mode == "L"
    with Image.open(out / "alpha.png") as a:  # a PNG keeps its alpha, warped with its colour
        assert a.mode == "RGBA" and np.median(np.asarray(a)[..., 3]) == 200
    with Image.open(out / "rotated.jpg") as r:
        assert r.getexif()[0x0112] == 6
    summary = json.loads((out / "lens-run" / "summary.json").read_text())
    assert {f["id"] for f in summary["failed"]} == {k for k, v in expect.items() if v != "ok"}
    assert not list(out.glob(".*.part"))
    # what an output could not keep is said per image, counted, and named on the console
    notes = {"cutout": ["alpha_dropped"], "sixteen": ["depth_reduced"], "phone": ["frames_dropped"], "pages": ["frames_dropped"]}
    assert {i: r["notes"] for i, r in records.items() if r["status"] == "ok" and r["notes"]} == notes
    assert summary["notes"] == {"alpha_dropped": 1, "depth_reduced": 1, "frames_dropped": 2}
    assert "images after the first (2 frames_dropped)" in result.output
    # decoded in spite of a decoder's warning: listed, and what it said recorded
    assert summary["decode_warnings"] == ["padded"]
    said = records["padded"]["decode_warnings"]
    assert len(said) == 1 and said[0].startswith("corrupt JPEG data: ") and said[0].endswith("extraneous bytes before marker 0xd9 (libjpeg)")
    assert "1 photos decoded in spite of libjpeg's warning" in " ".join(result.output.split())
    with Image.open(out / "phone.jpg") as p:
        assert p.format == "JPEG" and p.size == (256, 171)


def test_a_cut_out_png_keeps_its_transparency_without_fringes(tmp_path, photos):
    """A product cut-out: an opaque object on a transparent background whose hidden colour is
    green. The corrected PNG keeps its alpha, moved with the object, and its soft edges take the
    object's colour: warped straight, the hidden green bled into every edge pixel."""
    rgb = np.asarray(Image.open(photos / "p00.jpg").convert("RGB"))
    height, width = rgb.shape[:2]
    cutout = np.zeros((height, width, 4), np.uint8)
    cutout[..., 1] = 255  # the colour under the transparent background
    top, left = height // 4, width // 4
    cutout[top : 3 * top, left : 3 * left] = (255, 0, 0, 255)  # the object: opaque red
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(cutout, "RGBA").save(folder / "product.png")
    result = _run(folder, tmp_path / "out")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "lens-run" / "images.jsonl").read_text())
    assert record["notes"] == []
    with Image.open(tmp_path / "out" / "product.png") as out:
        assert out.mode == "RGBA" and out.size == (width, height)
        pixels = np.asarray(out)
    alpha = pixels[..., 3]
    edge = (alpha > 0) & (alpha < 255)
    assert edge.sum() > 100  # the warp moved the object by fractions of a pixel: soft edges exist
    assert pixels[..., 1][alpha >= 8].max() <= 2  # no green in the object or its edges
    assert (pixels[..., 0][alpha == 255] == 255).all()
    assert 0.15 < (alpha > 0).mean() < 0.4  # the object, a quarter of the frame, moved not lost


def test_a_fault_no_check_foresaw_fails_that_photo_and_the_run_goes_on(tmp_path, photos, monkeypatch):
    """Any exception while one photo is corrected stopped the whole run. Here a real one: with
    the size check switched off, OpenCV's remap asserts on a 33280 px wide panorama."""
    from lens.runtime import pipeline

    monkeypatch.setattr(pipeline, "frame_problem", lambda height, width: None)
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("p00.jpg", "p01.jpg"):
        shutil.copy(photos / name, folder / name)
    Image.fromarray(np.tile(_small("rocket.jpg", 256)[:64], (1, 130, 1))).save(folder / "p00a.png")
    out = tmp_path / "out"
    result = _run(folder, out, "--workers", "1")
    assert result.exit_code == 1, result.output
    summary = json.loads((out / "lens-run" / "summary.json").read_text())
    assert summary["ok"] == 2 and [f["id"] for f in summary["failed"]] == ["p00a"]
    assert "could not be corrected (error: OpenCV" in summary["failed"][0]["reason"] and "remap" in summary["failed"][0]["reason"]
    assert sorted(_outputs(out)) == ["p00.jpg", "p01.jpg"]


def _batch_of_three(photos: Path, out: Path):
    """A runner of the default build (no line fit) and three same-size jobs, as `lens run` hands
    a GPU backend one batch."""
    from lens.runtime.backends import OnnxRuntimeBackend
    from lens.runtime.pipeline import _decode
    from lens.runtime.runner import Job, RunOptions, Runner

    out.mkdir()
    jobs = [_decode(Job(name, photos / f"{name}.jpg", out / f"{name}.jpg")) for name in ("p00", "p03", "p06")]
    assert len({(j.image.height, j.image.width) for j in jobs}) == 1
    return Runner(OnnxRuntimeBackend(DEFAULT_BUILD, "cpu"), RunOptions(batch=3, refine="off")), jobs


def test_an_image_that_cannot_be_written_fails_alone_and_the_rest_of_its_batch_is_kept(tmp_path, photos):
    """On a GPU several images go through one batch. A fault writing the second (here a folder
    in the way of its output) failed all three, although the first had been written: the
    summary called a written file failed and the third was never written."""
    runner, jobs = _batch_of_three(photos, tmp_path / "out")
    (tmp_path / "out" / "p03.jpg").mkdir()
    records = runner.process(jobs)
    assert [r["status"] for r in records] == ["ok", "failed", "ok"]
    assert records[1]["error"].startswith(f"cannot write {tmp_path / 'out' / 'p03.jpg'}: ")
    assert sorted(p.name for p in (tmp_path / "out").glob("*.jpg") if p.is_file()) == ["p00.jpg", "p06.jpg"]


def test_a_batch_whose_inference_faults_is_run_again_image_by_image(tmp_path, photos, monkeypatch):
    """A batch whose inference raised (a GPU out of memory at a large --batch) failed every
    image in it. Each is now run alone; here the fault does not come back, so all three are
    corrected, to the bytes of a run without it, and their records name the batch's fault."""
    runner, jobs = _batch_of_three(photos, tmp_path / "clean")
    expected = {r["id"]: (tmp_path / "clean" / f"{r['id']}.jpg").read_bytes() for r in runner.process(jobs)}
    runner, jobs = _batch_of_three(photos, tmp_path / "out")
    real, calls = runner.backend.infer_lattice, []

    def out_of_memory_once(images, mode_override=-1):
        calls.append(len(images))
        if len(calls) == 2:
            raise MemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(images, mode_override)

    monkeypatch.setattr(runner.backend, "infer_lattice", out_of_memory_once)
    records = runner.process(jobs)
    assert [r["status"] for r in records] == ["ok"] * 3 and len(calls) == 5
    assert all(r["batch_retry"] == "the batch of 3 failed (MemoryError: CUDA out of memory. Tried to allocate 2.00 GiB); "
               "this image was run alone" for r in records)
    assert {r["id"]: (tmp_path / "out" / f"{r['id']}.jpg").read_bytes() for r in records} == expected


def test_running_out_of_gpu_memory_is_told_from_a_capture_that_cannot_work():
    # Out of memory while capturing a batch's CUDA graph turned the graphs off for the rest of
    # the run (every later batch eager, ~436 ms per batch of 16); it is now the batch's fault,
    # retried image by image. Ending the failed capture can raise over the OOM: it is found there too.
    from lens.runtime.cuda_graphs import _out_of_memory

    class OutOfMemoryError(RuntimeError):  # torch.cuda's, by name: torch is not imported here
        pass

    try:
        try:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        except RuntimeError:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
    except RuntimeError as exc:
        assert _out_of_memory(exc)
    assert _out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not _out_of_memory(RuntimeError("operation not permitted when stream is capturing"))


def test_batching_a_folder_of_many_sizes_holds_few_photos_and_loses_none():
    from lens.runtime.io import DecodedImage
    from lens.runtime.pipeline import HELD_BATCHES, _batches
    from lens.runtime.runner import Job

    # 60 photos, three of one size spread through the folder, the others each of its own size
    sizes = [(100, 150) if i % 20 == 0 else (100 + i, 150) for i in range(60)]
    read = []

    def decoded():
        for i, (h, w) in enumerate(sizes):
            read.append(i)
            yield Job(str(i), Path(f"{i}.jpg"), Path(f"out/{i}.jpg"), image=DecodedImage(np.zeros((h, w, 3), np.uint8)))

    done: list[int] = []
    for group in _batches(decoded(), 4, lambda job: None):
        assert len(read) - len(done) - len(group) <= HELD_BATCHES * 4  # decoded and still waiting
        assert len({(j.image.height, j.image.width) for j in group}) == 1
        done += [int(j.image_id) for j in group]
    assert sorted(done) == list(range(60))
    # and the same groups every time: they depend on the order and the sizes alone
    def groups():
        return [[j.image_id for j in g] for g in _batches(decoded(), 4, lambda job: None)]

    assert groups() == groups()


def test_outputs_are_byte_identical_across_runs_workers_and_batches(tmp_path, photos):
    runs = {}
    # "d": above 2 workers the line fits run in worker processes
    for name, args in {"a": ("--workers", "1", "--batch", "1"), "b": ("--workers", "2", "--batch", "3"), "c": ("--workers", "2", "--batch", "1"),
                       "d": ("--workers", "3", "--batch", "1")}.items():
        assert _run(photos, tmp_path / name, *args).exit_code == 0
        runs[name] = _outputs(tmp_path / name)
    assert runs["a"] == runs["b"] == runs["c"] == runs["d"]


def test_gpu_backends_batch_16_by_default_and_an_engine_no_more_than_its_profile(tmp_path):
    # `lens run` on a GPU left at --batch 1 ran at 1/3.7 of batch 16 (an H200, 2048 x 1367);
    # a TensorRT engine whose profile ends at 8 images refused every batch of 16. The plan is
    # made from the backend's attributes (a GPU backend cannot be built here): the CPU one is real
    from lens.runtime.backends import Backend, OnnxRuntimeBackend
    from lens.runtime.pipeline import GPU_BATCH, batch_plan

    cpu = OnnxRuntimeBackend(DEFAULT_BUILD, "cpu")
    assert batch_plan(cpu, 0)[0] == batch_plan(cpu, 8)[0] == 1
    gpu = Backend()
    gpu.samples_on_device = True
    assert GPU_BATCH == 16 and batch_plan(gpu, 0) == (16, "16 per inference (the GPU default; --batch to change)")
    assert batch_plan(gpu, 4) == (4, "4 per inference (asked for)")
    gpu.max_batch = 8  # a TensorRT engine's profile (`TensorRTBackend`)
    assert batch_plan(gpu, 0)[0] == batch_plan(gpu, 32)[0] == 8 and batch_plan(gpu, 2)[0] == 2
    assert batch_plan(gpu, 32)[1] == "8 per inference (asked for, at most 8: the engine's shape profile takes no more)"
    # on the CPU, no line about it, and the summary gives the batch the run used
    result = _run(SAMPLES, tmp_path / "out")
    assert result.exit_code == 0 and "batch:" not in result.output
    assert json.loads((tmp_path / "out" / "lens-run" / "summary.json").read_text())["options"]["batch"] == 1


def test_photos_of_sizes_a_tensorrt_engine_refuses_are_corrected_by_the_next_backend(tmp_path, photos):
    # An engine takes the sizes of its shape profile only: with the default one (up to
    # 4000 x 3000 landscape) every 24 MP DSLR photo and every portrait frame failed, each with
    # TensorRT's error. TensorRT cannot run here: the profile's check is the engine's own
    # method, and the run is made by ONNX Runtime limited to such a profile.
    from lens.runtime.backends import BackendUnavailable, Choice, OnnxRuntimeBackend, TensorRTBackend
    from lens.runtime.pipeline import RunOptions, run

    engine = object.__new__(TensorRTBackend)  # no engine loaded: only its profile is read
    engine.profile = {"min": [1, 3, 256, 256], "opt": [4, 3, 1367, 2048], "max": [8, 3, 3000, 4000]}
    assert engine.refuses(1367, 2048) is None and engine.refuses(3000, 4000) is None
    assert engine.refuses(4000, 6000) == "6000x4000 is outside the TensorRT engine's shape profile (256x256 to 4000x3000, width x height)"
    assert engine.refuses(4000, 3000) and engine.refuses(8, 8)  # a portrait frame; a thumbnail

    class Profiled(OnnxRuntimeBackend):
        profile = {"min": [1, 3, 64, 64], "opt": [1, 3, 256, 384], "max": [1, 3, 300, 400]}
        other = None

        def refuses(self, height, width):
            return TensorRTBackend.refuses(self, height, width)

        def fallback(self):
            if self.other is None:
                raise BackendUnavailable("ONNX Runtime has no CUDA provider")
            return Choice(self.other, "onnxruntime on the CPU")

    src = tmp_path / "src"
    src.mkdir()
    for name in ("p00", "p01", "p02"):
        shutil.copy(photos / f"{name}.jpg", src / f"{name}.jpg")
    Image.fromarray(_small("coffee.jpg", 512)).save(src / "big.jpg", quality=90)  # 512 wide: past the profile
    Image.fromarray(_small("coffee.jpg", 384).transpose(1, 0, 2).copy()).save(src / "tall.jpg", quality=90)  # a portrait
    options = RunOptions(workers=2, refine="off")
    plain = run(src, tmp_path / "plain", OnnxRuntimeBackend(DEFAULT_BUILD, "cpu"), options, {})
    backend = Profiled(DEFAULT_BUILD, "cpu")
    backend.other = OnnxRuntimeBackend(DEFAULT_BUILD, "cpu")
    summary = run(src, tmp_path / "out", backend, options, {})
    assert summary["ok"] == plain["ok"] == 5 and _outputs(tmp_path / "out") == _outputs(tmp_path / "plain")
    assert summary["other_backend"] == {"images": 2, "backend": "onnxruntime on the CPU", "unavailable": None}
    records = {json.loads(line)["id"]: json.loads(line) for line in (tmp_path / "out" / "lens-run" / "images.jsonl").read_text().splitlines()}
    assert records["big"]["backend"].startswith("onnxruntime on cpu: 512x") and "backend" not in records["p00"]
    # no backend to hand them to: those photos fail saying why, the others are corrected
    summary = run(src, tmp_path / "none", Profiled(DEFAULT_BUILD, "cpu"), options, {})
    assert summary["ok"] == 3 and sorted(f["id"] for f in summary["failed"]) == ["big", "tall"]
    assert all("outside the TensorRT engine's shape profile" in f["reason"] and "no other backend can take it (ONNX Runtime has no CUDA provider)"
               in f["reason"] for f in summary["failed"])


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM], ids=["SIGKILL", "Ctrl-C", "SIGTERM"])
def test_interrupt_then_resume_gives_the_uninterrupted_result(tmp_path, photos, sig):
    reference = tmp_path / "reference"
    assert _run(photos, reference).exit_code == 0
    big = tmp_path / "big"
    big.mkdir()
    for i in range(24):  # enough work to be killed in the middle
        (big / f"q{i:02d}.jpg").write_bytes((photos / f"p{i % 9:02d}.jpg").read_bytes())
    ref_big = tmp_path / "ref_big"
    assert _run(big, ref_big, "--workers", "1").exit_code == 0
    out = tmp_path / "killed"
    log = tmp_path / "log.txt"
    with open(log, "w") as console:
        proc = subprocess.Popen([sys.executable, "-m", "lens", "run", str(big), str(out), "--workers", "1"], stdout=console, stderr=console)
        deadline = time.time() + 120
        while time.time() < deadline and len(list(out.glob("q*.jpg"))) < 4:
            time.sleep(0.05)
        os.kill(proc.pid, sig)
        proc.wait(60)
    if sig != signal.SIGKILL:  # stops within the images in flight, records them, says how to go on
        assert proc.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig] and "Add --resume to the same command" in log.read_text()
    written = sorted(out.glob("q*.jpg"))
    assert 0 < len(written) < 24, "the run was not interrupted mid-way"
    for p in written:  # every visible output is complete
        assert p.read_bytes() == (ref_big / p.name).read_bytes()
    result = _run(big, out, "--resume", "--workers", "1")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "lens-run" / "summary.json").read_text())
    assert summary["skipped_resume"] >= len(written) - 1
    assert _outputs(out) == _outputs(ref_big)
    assert not list(out.glob(".*.part"))


def test_a_disk_that_fills_up_stops_the_run_with_a_clear_error_and_resume_goes_on(tmp_path, photos):
    """The run's records written to /dev/full (every write: "No space left on device") stand
    for a disk that filled up mid-run: it stopped with a traceback; a disk already full
    refused with one too."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    reference = tmp_path / "reference"
    assert _run(photos, reference, "--workers", "1").exit_code == 0
    out = tmp_path / "out"
    (out / "lens-run").mkdir(parents=True)
    (out / "lens-run" / "images.jsonl.part").symlink_to("/dev/full")
    result = runner.invoke(app, ["run", str(photos), str(out), "--workers", "1"])
    assert result.exit_code == 1, result.output
    assert "cannot write the run's records" in result.output and "No space left on device" in result.output
    assert "add --resume to the same command" in result.output and "Traceback" not in result.output
    for p in out.glob("*.jpg"):  # what was written is complete
        assert p.read_bytes() == (reference / p.name).read_bytes()
    (out / "lens-run" / "images.jsonl.part").unlink()  # space freed
    result = _run(photos, out, "--resume", "--workers", "1")
    assert result.exit_code == 0, result.output
    assert _outputs(out) == _outputs(reference)
    # a folder whose lock cannot even be written (on a full disk: ENOSPC; here the device
    # refuses to be truncated): refused before any work, naming the folder
    (out / "lens-run" / ".lock").unlink()
    (out / "lens-run" / ".lock").symlink_to("/dev/full")
    result = runner.invoke(app, ["run", str(photos), str(out)])
    assert result.exit_code == 2 and f"cannot write to the output folder {out}" in result.output.replace("\n", "")


def test_an_output_folder_whose_file_system_takes_no_lock_is_still_corrected(tmp_path, photos, monkeypatch):
    """An NFS share without a lock daemon refuses flock with ENOLCK: the run stopped with a
    traceback. It goes on unguarded, and says so."""
    import errno
    import fcntl

    def no_locks(handle, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    out = tmp_path / "out"
    result = _run(photos, out, "--workers", "1", "--refine", "off")
    assert result.exit_code == 0, result.output
    assert f"was not locked for this run: its file system takes no lock ({os.strerror(errno.ENOLCK)})" in result.output
    summary = json.loads((out / "lens-run" / "summary.json").read_text())
    assert summary["ok"] == 9 and summary["unlocked"].startswith("its file system takes no lock")


def test_resume_refuses_a_folder_written_with_other_settings(tmp_path, photos):
    # outputs of two settings in one folder would look alike and differ: --resume says so
    out = tmp_path / "out"
    assert _run(photos, out, "--refine", "off").exit_code == 0
    before = _outputs(out)
    result = _run(photos, out, "--resume", "--refine", "off", "--quality", "80")
    assert result.exit_code == 2 and "quality: 95 then, 80 now" in result.output
    assert _outputs(out) == before
    result = _run(photos, out, "--resume", "--refine", "off", "--workers", "1")  # workers change no byte
    assert result.exit_code == 0 and "9 skipped" in result.output
    assert _outputs(out) == before


def test_resume_goes_on_past_damaged_records_and_refuses_damaged_settings(tmp_path, photos):
    # after a power cut a record file's end may hold whatever the disk had: --resume stopped
    # with a UnicodeDecodeError traceback; a damaged settings file read as "other settings"
    out = tmp_path / "out"
    assert _run(photos, out, "--refine", "off").exit_code == 0
    before = _outputs(out)
    records = out / "lens-run" / "images.jsonl"
    lines = records.read_bytes().splitlines(keepends=True)
    records.write_bytes(b"".join(lines[:5]) + b"\x00\x00\xff\xfe garbage\n[1, 2]\n{\"id\": 7}\n")
    result = _run(photos, out, "--resume", "--refine", "off")
    assert result.exit_code == 0 and ": 4 in this run, 5 skipped" in result.output, result.output
    assert _outputs(out) == before
    assert len(records.read_text().splitlines()) == 9  # rewritten whole
    (out / "lens-run" / "settings.json").write_bytes(b"{\"backend\": \"onnx")
    result = _run(photos, out, "--resume", "--refine", "off")
    assert result.exit_code == 2 and "settings.json is damaged" in result.output, result.output
    assert _outputs(out) == before


def test_resume_corrects_again_an_input_replaced_since(tmp_path, photos):
    shoot = tmp_path / "shoot"
    shoot.mkdir()
    for p in sorted(photos.iterdir())[:3]:
        (shoot / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "out"
    assert _run(shoot, out, "--refine", "off").exit_code == 0
    first = _outputs(out)
    replaced = sorted(shoot.iterdir())[1]
    replaced.write_bytes((photos / "p05.jpg").read_bytes())  # a re-shot photo, same name
    result = _run(shoot, out, "--resume", "--refine", "off")
    assert result.exit_code == 0 and ": 1 in this run, 2 skipped" in result.output
    fresh = tmp_path / "fresh"
    assert _run(shoot, fresh, "--refine", "off").exit_code == 0
    assert _outputs(out) == _outputs(fresh) and _outputs(out)[replaced.name] != first[replaced.name]


def test_resume_corrects_again_an_output_left_short_by_a_power_cut(tmp_path, photos):
    """Images are renamed into place without an fsync: after a power cut one can be empty or
    short under its final name while its record says ok, and --resume skipped it."""
    out = tmp_path / "out"
    assert _run(photos, out, "--refine", "off").exit_code == 0
    before = _outputs(out)
    (out / "p01.jpg").write_bytes(b"")
    (out / "p02.jpg").write_bytes(before["p02.jpg"][: len(before["p02.jpg"]) // 2])
    (out / "p03.jpg").unlink()
    result = _run(photos, out, "--resume", "--refine", "off")
    said = " ".join(result.output.split())
    assert result.exit_code == 0 and ": 3 in this run, 6 skipped" in said, said
    assert "3 images an earlier run had corrected were corrected again: their output was gone or not the size recorded" in said
    assert _outputs(out) == before
    summary = json.loads((out / "lens-run" / "summary.json").read_text())
    assert summary["outputs_redone"] == 3
    records = [json.loads(line) for line in (out / "lens-run" / "images.jsonl").read_text().splitlines()]
    assert all(r["output_bytes"] == len(before[Path(r["output"]).name]) for r in records)


def test_an_output_folder_that_cannot_be_made_is_a_clear_error(tmp_path, photos):
    (tmp_path / "a_file").write_text("not a folder")
    result = _run(photos, tmp_path / "a_file" / "out")
    assert result.exit_code == 2 and "cannot create the output folder" in result.output and "Not a directory" in result.output


def test_files_that_are_not_images_are_named_and_an_empty_input_is_an_error(tmp_path, photos):
    shoot = tmp_path / "shoot"
    shoot.mkdir()
    for name in ("IMG_1.NEF", "IMG_2.nef", "IMG_3.CR2"):  # what a camera card also holds
        (shoot / name).write_bytes(b"raw")
    result = _run(shoot, tmp_path / "out")
    assert result.exit_code == 2 and "no images in" in result.output
    assert "ignored (not a jpg/jpeg/png" in result.output and "1 .cr2, 2 .nef" in result.output
    (shoot / "p00.jpg").write_bytes((photos / "p00.jpg").read_bytes())
    result = _run(shoot, tmp_path / "out", "--refine", "off")
    assert result.exit_code == 0 and "1 .cr2, 2 .nef" in result.output
    summary = json.loads((tmp_path / "out" / "lens-run" / "summary.json").read_text())
    assert summary["ok"] == 1 and summary["ignored_files"] == {".cr2": 1, ".nef": 2}


def test_a_phones_heic_photo_is_corrected_upright_into_a_jpeg(tmp_path, monkeypatch):
    """iPhones save HEIC. Its rotation lives in the container: libheif decodes it upright, so the
    JPEG is upright with orientation 1, and keeps the rest of the EXIF. Without the heif extra
    the photo fails with the command that adds it."""
    import pillow_heif  # the dev extra has it

    from lens.runtime import io as lens_io

    rgb = _small("rocket.jpg", 480)
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "Apple"
    shoot = tmp_path / "shoot"
    shoot.mkdir()
    pillow_heif.from_pillow(Image.fromarray(rgb)).save(shoot / "IMG_1.HEIC", quality=90, exif=exif.tobytes())
    (shoot / "IMG_2.jpg").write_bytes((shoot / "IMG_1.HEIC").read_bytes())  # a HEIC named .jpg, as some exports are
    lens_io._heif_problem.cache_clear()
    result = _run(shoot, tmp_path / "out", "--refine", "off")
    assert result.exit_code == 0, result.output
    for name in ("IMG_1.jpg", "IMG_2.jpg"):
        with Image.open(tmp_path / "out" / name) as out:
            assert out.format == "JPEG" and out.size == (rgb.shape[0], rgb.shape[1])  # upright: turned a quarter
            assert out.getexif().get(0x0112, 1) == 1 and out.getexif()[0x010F] == "Apple"
    qa = runner.invoke(app, ["qa", str(tmp_path / "out"), "--inputs", str(shoot), "--json", str(tmp_path / "qa.json")])  # its inputs are the HEICs
    assert qa.exit_code == 0 and "QA passed (2 checked)" in qa.output, qa.output
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # a base install
    lens_io._heif_problem.cache_clear()
    try:
        result = _run(shoot, tmp_path / "no_extra", "--refine", "off")
    finally:
        lens_io._heif_problem.cache_clear()
    assert result.exit_code == 1 and result.output.count("pip install 'lens[heif]'") == 2, result.output


def _exif_with_thumbnail(orientation: int, thumbnail: bytes) -> bytes:
    """A camera's EXIF: IFD0 (orientation) linked to IFD1, which points at a JPEG thumbnail."""
    import struct

    ifd0 = struct.pack("<H", 1) + struct.pack("<HHII", 0x0112, 3, 1, orientation) + struct.pack("<I", 26)
    data_at = 26 + 2 + 2 * 12 + 4
    ifd1 = struct.pack("<H", 2) + struct.pack("<HHII", 0x0201, 4, 1, data_at) + struct.pack("<HHII", 0x0202, 4, 1, len(thumbnail)) + struct.pack("<I", 0)
    return b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd0 + ifd1 + thumbnail


def test_the_uncorrected_exif_thumbnail_is_not_carried_over(tmp_path, photos):
    # file browsers show a JPEG's EXIF thumbnail in place of the photo: the camera's one shows
    # the uncorrected image
    import struct

    rgb = _small("rocket.jpg", 480)
    ok, thumb = cv2.imencode(".jpg", cv2.resize(rgb, (160, 120)))
    shoot = tmp_path / "shoot"
    shoot.mkdir()
    Image.fromarray(rgb).save(shoot / "card.jpg", quality=92, exif=_exif_with_thumbnail(6, thumb.tobytes()))
    with Image.open(shoot / "card.jpg") as src:
        raw = src.info["exif"]
        assert struct.unpack("<I", raw[6 + 8 + 14 : 6 + 8 + 18])[0] == 26  # the input links its thumbnail
    assert _run(shoot, tmp_path / "out", "--refine", "off").exit_code == 0
    with Image.open(tmp_path / "out" / "card.jpg") as out:
        kept = out.info["exif"]
        assert out.getexif()[0x0112] == 6  # orientation and the rest kept
    assert struct.unpack("<I", kept[6 + 8 + 14 : 6 + 8 + 18])[0] == 0  # no thumbnail linked
    assert len(kept) == len(raw)


def test_an_rgb_photos_icc_profile_is_kept_and_a_cmyk_ones_is_not_put_on_rgb_pixels(tmp_path):
    """A wide-gamut photo's profile must travel with it (colours shift without it); a CMYK
    photo is converted to RGB, and its CMYK profile would make colour-managed viewers read
    the RGB values as ink amounts."""
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    cmyk = srgb[:16] + b"CMYK" + srgb[20:]  # a CMYK profile as far as its header says
    shoot = tmp_path / "shoot"
    shoot.mkdir()
    rgb = _small("rocket.jpg", 320)
    Image.fromarray(rgb).save(shoot / "rgb.jpg", quality=92, icc_profile=srgb)
    Image.fromarray(rgb).convert("CMYK").save(shoot / "cmyk.jpg", quality=92, icc_profile=cmyk)
    out = tmp_path / "out"
    assert _run(shoot, out, "--refine", "off").exit_code == 0
    with Image.open(out / "rgb.jpg") as a, Image.open(out / "cmyk.jpg") as b:
        assert a.info.get("icc_profile") == srgb
        assert b.mode == "RGB" and b.info.get("icc_profile") is None
    records = {r["id"]: r for r in map(json.loads, (out / "lens-run" / "images.jsonl").read_text().splitlines())}
    assert records["cmyk"]["notes"] == ["icc_dropped"] and records["rgb"]["notes"] == []


def test_exif_too_large_for_a_jpeg_output_is_noted_not_dropped_silently(tmp_path):
    """A WebP's (or HEIC's) EXIF may exceed the 64 KB of a JPEG's APP1 segment: its JPEG output
    has none, which was said nowhere; a PNG output keeps it."""
    exif = Image.Exif()
    exif[0x010F] = "Canon"
    exif[0x927C] = bytes(range(256)) * 300  # a maker note of 75 KB
    shoot = tmp_path / "shoot"
    shoot.mkdir()
    rgb = Image.fromarray(_small("rocket.jpg", 256))
    rgb.save(shoot / "big.webp", exif=exif.tobytes())
    rgb.save(shoot / "scan.png", exif=exif.tobytes())
    rgb.save(shoot / "small.webp", exif=_small_exif())
    out = tmp_path / "out"
    result = _run(shoot, out, "--refine", "off")
    assert result.exit_code == 0, result.output
    records = {r["source"].rsplit("/", 1)[1]: r for r in map(json.loads, (out / "lens-run" / "images.jsonl").read_text().splitlines())}
    assert records["big.webp"]["notes"] == ["exif_dropped"]
    assert records["scan.png"]["notes"] == [] and records["small.webp"]["notes"] == []
    with Image.open(out / "scan.png") as p, Image.open(out / "small.jpg") as s:
        assert p.getexif()[0x010F] == "Canon" and s.getexif()[0x010F] == "Nikon"
    assert "EXIF too large for a JPEG (over 64 KB) (1 exif_dropped)" in result.output


def _small_exif() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "Nikon"
    return exif.tobytes()


def test_xmp_and_iptc_of_a_jpeg_are_kept(tmp_path):
    # a photographer's copyright, keywords and ratings live there
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><dc:rights>(c) Studio</dc:rights><xmp:Rating>5</xmp:Rating></x:xmpmeta>'
    iptc = b"Photoshop 3.0\x008BIM\x04\x04\x00\x00\x00\x00\x00\x0c\x1c\x02t\x00\x08(c) Studi"
    shoot = tmp_path / "shoot"
    shoot.mkdir()
    buf = io.BytesIO()
    Image.fromarray(_small("rocket.jpg", 400)).save(buf, "JPEG", quality=92, xmp=xmp)
    data = buf.getvalue()
    app13 = b"\xff\xed" + (len(iptc) + 2).to_bytes(2, "big") + iptc
    (shoot / "shot.jpg").write_bytes(data[:2] + app13 + data[2:])
    with Image.open(shoot / "shot.jpg") as src:
        assert src.info["xmp"] == xmp and ("APP13", iptc) in src.applist
    assert _run(shoot, tmp_path / "out", "--refine", "off").exit_code == 0
    with Image.open(tmp_path / "out" / "shot.jpg") as out:
        assert out.info["xmp"] == xmp and ("APP13", iptc) in out.applist


# A phone's main XMP (as Android writes an Ultra HDR Motion Photo): the gain map and the video
# are stored after the JPEG, with a directory of their byte lengths
PHONE_XMP = b"""<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="Adobe XMP Core 5.1.2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="" xmlns:hdrgm="http://ns.adobe.com/hdr-gain-map/1.0/"
    xmlns:Container="http://ns.google.com/photos/1.0/container/" xmlns:Item="http://ns.google.com/photos/1.0/container/item/"
    xmlns:GCamera="http://ns.google.com/photos/1.0/camera/" xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:xmp="http://ns.adobe.com/xap/1.0/" hdrgm:Version="1.0" GCamera:MotionPhoto="1" GCamera:MotionPhotoVersion="1"
    GCamera:MotionPhotoPresentationTimestampUs="968000" xmp:Rating="5">
   <dc:rights><rdf:Alt><rdf:li xml:lang="x-default">(c) Studio</rdf:li></rdf:Alt></dc:rights>
   <Container:Directory>
    <rdf:Seq>
     <rdf:li rdf:parseType="Resource"><Container:Item Item:Semantic="Primary" Item:Mime="image/jpeg"/></rdf:li>
     <rdf:li rdf:parseType="Resource"><Container:Item Item:Semantic="GainMap" Item:Mime="image/jpeg" Item:Length="31337"/></rdf:li>
     <rdf:li rdf:parseType="Resource"><Container:Item Item:Semantic="MotionPhoto" Item:Mime="video/mp4" Item:Length="1500000"/></rdf:li>
    </rdf:Seq>
   </Container:Directory>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>"""


def test_a_phones_xmp_no_longer_points_at_the_gain_map_video_and_depth_that_the_output_does_not_hold(tmp_path):
    """An Ultra HDR Motion Photo: its gain map (a second image) and video (after the JPEG) are
    not in the corrected output, nor is a Dynamic Depth photo's depth map, so their XMP must
    not announce them (a viewer would look for them at offsets where nothing is); the
    photographer's rights, rating and credit stay, and the notes say what was dropped."""
    import xml.etree.ElementTree as ET

    shoot = tmp_path / "shoot"
    shoot.mkdir()
    photo = _small("rocket.jpg", 400)
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="MPO", save_all=True, append_images=[Image.fromarray(photo[::4, ::4])])
    data = buf.getvalue()
    payload = b"http://ns.adobe.com/xap/1.0/\x00" + PHONE_XMP
    xmp_segment = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    (shoot / "pxl.jpg").write_bytes(data[:2] + xmp_segment + data[2:] + b"\x00\x00\x00\x18ftypmp42" + bytes(64))  # the video after it
    with Image.open(shoot / "pxl.jpg") as src:
        # Pillow reads an Ultra HDR photo as one frame: the gain map is found from its MPF
        assert b"hdrgm:Version" in src.info["xmp"] and getattr(src, "n_frames", 1) == 1
    # an older phone's Micro Video, its properties as elements under another prefix
    old_xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
               b'<rdf:Description xmlns:gc="http://ns.google.com/photos/1.0/camera/" xmlns:xmp="http://ns.adobe.com/xap/1.0/">'
               b'<gc:MicroVideo>1</gc:MicroVideo><gc:MicroVideoOffset>123456</gc:MicroVideoOffset><xmp:Rating>4</xmp:Rating>'
               b'</rdf:Description></rdf:RDF></x:xmpmeta>')
    Image.fromarray(photo).save(shoot / "old.jpg", quality=92, xmp=old_xmp)
    # a Dynamic Depth portrait: depth map and cameras described in the Device namespace
    depth_xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
                 b'<rdf:Description xmlns:Device="http://ns.google.com/photos/dd/1.0/device/" xmlns:Container="http://ns.google.com/photos/dd/1.0/container/"'
                 b' xmlns:Item="http://ns.google.com/photos/dd/1.0/item/" xmlns:dc="http://purl.org/dc/elements/1.1/">'
                 b'<Device:Container><Container:Directory><rdf:Seq><rdf:li rdf:parseType="Resource"><Container:Item Item:Mime="image/jpeg"'
                 b' Item:Length="0"/></rdf:li><rdf:li rdf:parseType="Resource"><Container:Item Item:Mime="image/jpeg" Item:Length="9000"'
                 b' Item:DataURI="android/depthmap"/></rdf:li></rdf:Seq></Container:Directory></Device:Container>'
                 b'<Device:Cameras><rdf:Seq><rdf:li rdf:parseType="Resource"><Device:Camera/></rdf:li></rdf:Seq></Device:Cameras>'
                 b'<dc:creator><rdf:Seq><rdf:li>Agent</rdf:li></rdf:Seq></dc:creator></rdf:Description></rdf:RDF></x:xmpmeta>')
    Image.fromarray(photo).save(shoot / "depth.jpg", quality=92, xmp=depth_xmp)
    result = _run(shoot, tmp_path / "out", "--refine", "off")
    assert result.exit_code == 0, result.output
    assert "a Motion Photo's video (2 motion_video_dropped)" in result.output
    assert "a Dynamic Depth photo's depth map (1 depth_dropped)" in result.output
    records = {r["id"]: r for r in map(json.loads, (tmp_path / "out" / "lens-run" / "images.jsonl").read_text().splitlines())}
    assert records["pxl"]["notes"] == ["frames_dropped", "motion_video_dropped"]
    assert records["old"]["notes"] == ["motion_video_dropped"]
    assert records["depth"]["notes"] == ["depth_dropped"]
    with Image.open(tmp_path / "out" / "old.jpg") as out:
        assert out.info["xmp"] == old_xmp.replace(b"<gc:MicroVideo>1</gc:MicroVideo><gc:MicroVideoOffset>123456</gc:MicroVideoOffset>", b"")
    with Image.open(tmp_path / "out" / "depth.jpg") as out:
        kept = ET.fromstring(out.info["xmp"])
    assert not [e for e in kept.iter() if "photos/dd/1.0" in e.tag]
    assert kept.find(".//{http://purl.org/dc/elements/1.1/}creator")[0][0].text == "Agent"
    with Image.open(tmp_path / "out" / "pxl.jpg") as out:
        xmp = out.info["xmp"]
    root = ET.fromstring(xmp)  # still well-formed
    description = root.find(".//{http://www.w3.org/1999/02/22-rdf-syntax-ns#}Description")
    assert not [k for k in description.attrib if "hdr-gain-map" in k or "MotionPhoto" in k]
    assert root.find(".//{http://ns.google.com/photos/1.0/container/}Directory") is None
    assert description.attrib["{http://ns.adobe.com/xap/1.0/}Rating"] == "5"
    assert root.find(".//{http://purl.org/dc/elements/1.1/}rights")[0][0].text == "(c) Studio"


def test_a_workload_folder_is_corrected_to_submission_names_and_its_targets_are_left_alone(tmp_path, photos):
    """The workload's layout: <id>_original.jpg (input) beside <id>_generated.jpg (target).
    Each input is corrected to <id>.jpg, as a submission names it; a target beside its input
    is not corrected (said on the console); the result passes QA and packages as it stands."""
    src, out = tmp_path / "pairs", tmp_path / "out"
    src.mkdir()
    shutil.copy(photos / "p00.jpg", src / "shoot1_g0_original.jpg")
    shutil.copy(photos / "p01.jpg", src / "shoot1_g0_generated.jpg")
    shutil.copy(photos / "p02.jpg", src / "shoot2_g1_original.jpg")  # a test image: no target
    shutil.copy(photos / "p03.jpg", src / "sky_generated.jpg")  # no input beside it: a photo like any other
    result = _run(src, out)
    assert result.exit_code == 0, result.output
    assert "left out: 1 workload target" in result.output
    assert sorted(_outputs(out)) == ["shoot1_g0.jpg", "shoot2_g1.jpg", "sky_generated.jpg"]
    records = [json.loads(line) for line in (out / "lens-run" / "images.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in records) == ["shoot1_g0", "shoot2_g1", "sky_generated"]
    assert json.loads((out / "lens-run" / "summary.json").read_text())["workload_targets_left_out"] == 1
    packaged = runner.invoke(app, ["package", str(out), "--inputs", str(src), "--out", str(tmp_path / "submission.zip"), "--strict"])
    assert packaged.exit_code == 0, packaged.output
    with zipfile.ZipFile(tmp_path / "submission.zip") as z:
        assert z.namelist() == ["shoot1_g0.jpg", "shoot2_g1.jpg", "sky_generated.jpg"]


def test_recursive_run_mirrors_the_folders_and_leaves_its_output_out(tmp_path, photos):
    # a photo pipeline keeps one folder per listing; the output may sit inside the input
    shoots = tmp_path / "shoots"
    for rel, src in (("IMG_1.jpg", "p00"), ("listing42/IMG_1.jpg", "p01"), ("listing42/back/IMG_2.jpg", "p02"), ("listing7/IMG_1.jpg", "p03")):
        (shoots / rel).parent.mkdir(parents=True, exist_ok=True)
        (shoots / rel).write_bytes((photos / f"{src}.jpg").read_bytes())
    os.symlink("..", shoots / "listing42" / "up")  # a link back up the tree is read once
    out = shoots / "corrected"
    result = _run(shoots, out, "--recursive", "--refine", "off")
    assert result.exit_code == 0, result.output
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg"))
    assert written == ["IMG_1.jpg", "listing42/IMG_1.jpg", "listing42/back/IMG_2.jpg", "listing7/IMG_1.jpg"]
    records = [json.loads(line) for line in (out / "lens-run" / "images.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["IMG_1", "listing42/IMG_1", "listing42/back/IMG_2", "listing7/IMG_1"]
    single = tmp_path / "single"  # each output is the photo's own correction
    assert _run(shoots / "listing42" / "back" / "IMG_2.jpg", single, "--refine", "off").exit_code == 0
    assert (single / "IMG_2.jpg").read_bytes() == (out / "listing42" / "back" / "IMG_2.jpg").read_bytes()
    again = _run(shoots, out, "--recursive", "--refine", "off", "--resume")  # the output folder is not an input
    assert again.exit_code == 0 and "4 corrected (hybrid 4): 0 in this run, 4 skipped as done by an earlier run (--resume), 0 failed" in again.output
    elsewhere = tmp_path / "elsewhere"  # nor is an earlier run's output kept inside the input
    assert _run(shoots, elsewhere, "--recursive", "--refine", "off").exit_code == 0
    assert len(list(elsewhere.rglob("*.jpg"))) == 4
    flat = _run(shoots, tmp_path / "flat", "--refine", "off")  # without --recursive: the top folder only
    assert flat.exit_code == 0 and len(list((tmp_path / "flat").rglob("*.jpg"))) == 1


def test_a_second_run_into_a_busy_folder_is_refused(tmp_path, photos):
    # an overlapping cron job would delete the first run's temporary files and mix records
    import fcntl

    out = tmp_path / "out"
    (out / "lens-run").mkdir(parents=True)
    with open(out / "lens-run" / ".lock", "a+") as held:  # what a run in progress holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242")
        held.flush()
        result = _run(photos, out, "--refine", "off")
        assert result.exit_code == 2 and "another lens run (process 4242) is writing to" in result.output
        assert not list(out.glob("*.jpg"))
    assert _run(photos, out, "--refine", "off").exit_code == 0  # free again once released


def test_runtime_needs_no_torch(tmp_path, photos):
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
        "from lens.cli import app\n"
        f"app(['run', {str(photos)!r}, {str(tmp_path / 'out')!r}], prog_name='lens')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list((tmp_path / "out").glob("*.jpg"))) == 9


def test_a_file_name_cannot_break_or_restyle_the_console(tmp_path):
    # a name holding a newline printed its failure on two lines, and one holding a terminal
    # escape sequence reached the terminal as is (here: clear the screen)
    src = tmp_path / "src"
    src.mkdir()
    (src / "new\nline.jpg").write_bytes(b"not a photo")
    (src / "clear\x1b[2Jscreen.jpg").write_bytes(b"not a photo")
    shutil.copy(SAMPLES / "rocket.jpg", src / "rocket.jpg")
    result = _run(src, tmp_path / "out", "--refine", "off")
    assert result.exit_code == 1 and "\x1b" not in result.output
    failed = [line for line in result.output.splitlines() if line.startswith("failed:")]
    assert len(failed) == 2 and any("new\\nline.jpg: not a readable image" in line for line in failed), failed
    assert any("clear\\x1b[2Jscreen.jpg" in line for line in failed), failed


def test_damaged_files_are_reported_without_anonymous_library_warnings(tmp_path):
    """Pillow warned, unattributed, of EXIF it could not parse as it opened such a JPEG (which
    is corrected, its EXIF block copied as it is); libpng and OpenCV of a PNG cut short or damaged."""
    folder = tmp_path / "in"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "Canon"
    Image.fromarray(_small("rocket.jpg", 256)).save(folder / "edited.jpg", exif=exif.tobytes())
    data = bytearray((folder / "edited.jpg").read_bytes())
    app1 = data.index(b"\xff\xe1")
    data[app1 + 4 + 6 + 8 + 2 + 8 : app1 + 4 + 6 + 8 + 2 + 12] = b"\xff\xff\x00\x00"  # the first tag's value points past the block
    (folder / "edited.jpg").write_bytes(bytes(data))
    block = bytes(data[app1 : app1 + 2 + int.from_bytes(data[app1 + 2 : app1 + 4], "big")])
    # and PNGs cut short and damaged: reported by name, without libpng's and OpenCV's anonymous lines
    Image.fromarray(_small("coffee.jpg", 256)).save(folder / "cut.png")
    data = (folder / "cut.png").read_bytes()
    (folder / "cut.png").write_bytes(data[:-5000])
    damaged = bytearray(data)
    damaged[data.index(b"IDAT") + 1000] ^= 1
    (folder / "damaged.png").write_bytes(bytes(damaged))
    proc = subprocess.run([sys.executable, "-m", "lens", "run", str(folder), str(tmp_path / "out"), "--refine", "off"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]  # the PNGs failed
    assert "cut.png: truncated PNG" in proc.stderr and "damaged.png: corrupt PNG: its IDAT chunk" in proc.stderr
    assert "Warning" not in proc.stderr and "WARN" not in proc.stderr and "libpng" not in proc.stderr, proc.stderr
    assert block in (tmp_path / "out" / "edited.jpg").read_bytes()


def test_a_run_logged_without_a_terminal_says_how_far_it_is_as_it_goes(tmp_path, photos):
    """Under cron or systemd the output is a log, where Rich draws its bar once, at the end: a
    run of thousands of photos would say nothing for hours. There it prints plain lines."""
    env = {**os.environ, "LENS_PROGRESS_EVERY_S": "0"}
    proc = subprocess.run([sys.executable, "-m", "lens", "run", str(photos), str(tmp_path / "out"), "--refine", "off"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stderr.splitlines()
    done = [int(m.group(1)) for m in map(re.compile(r"^lens run: (\d+)/9 \(\d+%\), .* img/s, 0:00:\d\d elapsed").match, lines) if m]
    assert len(done) >= 5 and done == sorted(done), lines
    assert lines[-1].startswith("9 corrected") and all(not line.startswith("lens run:") for line in lines[-2:])


@pytest.mark.parametrize("width", [1024, 2048])
def test_cpu_sampling_path_matches_the_graphs_gridsample(width):
    """The CPU graph reads every other pixel and returns its grid on a lattice, which the runtime
    enlarges into maps and samples with OpenCV (fixed-point positions, 1/32 px, like
    cv2.undistort); the GPU graph samples its full-resolution grid with GridSample. Same
    image, same model, every mode: the same parameters and mode, and within 1 grey level on
    >= 99.9% of pixels at production sizes (below ~500 px the 1/32-px rounding shows on sharp
    edges)."""
    import onnxruntime as ort

    from lens.runtime.backends import lattice_feed, run_cpu_halves
    from lens.runtime.lens_maps import maps_from_lattice
    from lens.runtime.sampling import warp_with_maps

    full = ort.InferenceSession(str(DEFAULT_BUILD / ONNX_FULL), providers=["CPUExecutionProvider"])
    halves = [ort.InferenceSession(str(DEFAULT_BUILD / n), providers=["CPUExecutionProvider"]) for n in (ONNX_CPU_NETWORK, ONNX_CPU_WARP)]
    for name, mode in (("rocket.jpg", -1), ("coffee.jpg", -1), ("coffee.jpg", 1), ("rocket.jpg", 2)):
        rgb = _small(name, width)
        modes = np.array([mode], dtype=np.int64)
        params, chosen, corrected = full.run(["params", "mode", "corrected"], {"image": np.ascontiguousarray(rgb.transpose(2, 0, 1))[None], "mode_override": modes})
        cpu = run_cpu_halves(*halves, lattice_feed(rgb[None], modes))
        cpu_params, cpu_chosen, lattice = cpu["params"], cpu["mode"], cpu["lattice"]
        assert np.array_equal(cpu_params, params) and cpu_chosen == chosen
        ours = warp_with_maps(rgb, *maps_from_lattice(lattice[0, 0], lattice[0, 1], *rgb.shape[:2]))
        diff = np.abs(ours.astype(int) - corrected[0].transpose(1, 2, 0).astype(int))
        inner = diff[2:-2, 2:-2]  # GridSample blends with zero padding exactly at the border
        assert (inner > 1).mean() <= 0.001, (name, mode, (inner > 1).mean(), inner.max())


@pytest.mark.parametrize("size", [(2048, 1367), (1001, 667), (37, 5)])
def test_rgb_warps_are_opencvs_three_channel_remap_to_the_byte(size):
    """`sampling.remap` pads RGB to 4 channels for OpenCV's faster path: every pixel must come out
    as a plain 3-channel ``cv2.remap`` samples it (float and fixed-point maps, samples outside
    the photo, widths that are no multiple of a vector, a view of an RGBA photo's colour)."""
    from lens.runtime.sampling import grid_to_maps, remap

    width, height = size
    rng = np.random.default_rng(width)
    rgba = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    rgba[: height // 2, : width // 2, :3] = _small("rocket.jpg", width)[: height // 2, : width // 2]
    u, v = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    map_x = (u - width / 2) * np.float32(1.07) + width / 2 + np.float32(0.37) * np.sin(v / 9)  # some samples fall outside
    map_y = (v - height / 2) * np.float32(1.05) + height / 2 + np.float32(0.29) * np.cos(u / 7)
    grid = np.stack([map_x / (width - 1) * 2 - 1, map_y / (height - 1) * 2 - 1], axis=-1)
    for maps in ((map_x, map_y), grid_to_maps(grid)):
        for pixels in (np.ascontiguousarray(rgba[..., :3]), rgba[..., :3]):
            expected = cv2.remap(np.ascontiguousarray(pixels), maps[0], maps[1], interpolation=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            got = remap(pixels, maps)
            assert got.shape == expected.shape and got.dtype == np.uint8
            assert np.array_equal(got, expected), (size, maps[0].dtype, np.abs(got.astype(int) - expected).max())


def test_codec_choice_is_said_and_gpu_codec_refused_without_a_gpu_backend(tmp_path, photos):
    result = _run(photos, tmp_path / "out")
    assert "codec: cpu (onnxruntime on cpu takes host images)" in result.output
    summary = json.loads((tmp_path / "out" / "lens-run" / "summary.json").read_text())
    assert summary["codec"].startswith("cpu")
    refused = _run(photos, tmp_path / "out2", "--codec", "gpu")
    assert refused.exit_code == 2 and "--codec gpu needs the torch backend on CUDA" in refused.output
    assert not (tmp_path / "out2").exists()


def test_only_complete_rgb_jpegs_are_kept_for_the_gpu_decoder(tmp_path):
    from lens.runtime.io import read_image

    rgb = _small("rocket.jpg", 64)
    Image.fromarray(rgb).save(tmp_path / "rgb.jpg", quality=90, exif=Image.Exif().tobytes())
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.jpg", quality=90)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "rgb.jpg").read_bytes()[:-200])
    kept = read_image(tmp_path / "rgb.jpg", keep_jpeg=True)
    assert kept.pixels is None and kept.encoded == (tmp_path / "rgb.jpg").read_bytes()
    assert (kept.height, kept.width) == rgb.shape[:2] and kept.exif
    for name in ("grey.jpg", "rgb.png"):
        assert read_image(tmp_path / name, keep_jpeg=True).pixels is not None, name
    with pytest.raises(Exception, match="truncated"):
        read_image(tmp_path / "cut.jpg", keep_jpeg=True)
    # a phone's JPEG with a gain map after it goes to the GPU whole (decoders read the first
    # image) and is noted as losing it, as on the CPU path
    Image.fromarray(rgb).save(tmp_path / "phone.jpg", format="MPO", save_all=True, append_images=[Image.fromarray(rgb[:16, :16])])
    phone = read_image(tmp_path / "phone.jpg", keep_jpeg=True)
    assert phone.pixels is None and phone.notes == ("frames_dropped",)


def test_jpegs_for_the_gpu_decoder_are_checked_for_damage_on_the_host(tmp_path):
    # nvJPEG decodes a JPEG whose data breaks off without a word (on an H200 the damaged file
    # below came out "ok", its lower part garbled): the GPU path checks the data on host
    # threads, with the CPU decoder's verdict, before it writes the output
    from concurrent.futures import ThreadPoolExecutor

    from lens.runtime.io import ImageReadError, read_image
    from lens.runtime.pipeline import _decode, jpeg_check_threads
    from lens.runtime.runner import Job, _data_check_problem

    Image.fromarray(_small("rocket.jpg", 512)).save(tmp_path / "good.jpg", quality=90)
    data = (tmp_path / "good.jpg").read_bytes()
    middle = (data.index(b"\xff\xda") + len(data)) // 2
    (tmp_path / "damaged.jpg").write_bytes(data[:middle] + data[middle + 200 :])
    (tmp_path / "stray.jpg").write_bytes(data[:-2] + bytes(7) + data[-2:])  # a drone's padding: decoded, with libjpeg's warning
    with ThreadPoolExecutor(1) as checks:
        jobs = {name: _decode(Job(name, tmp_path / f"{name}.jpg", tmp_path / "out" / f"{name}.jpg"), checks) for name in ("good", "damaged", "stray")}
        for job in jobs.values():
            assert job.error is None and job.image.pixels is None and job.image.encoded is not None  # kept for the GPU decoder
        assert _data_check_problem(jobs["good"]) is None and jobs["good"].image.warnings == ()
        with pytest.raises(ImageReadError) as cpu:
            read_image(tmp_path / "damaged.jpg")
        assert _data_check_problem(jobs["damaged"]) == cpu.value.reason
        assert cpu.value.reason.startswith("corrupt JPEG data: premature end of data segment")
        assert _data_check_problem(jobs["stray"]) is None
        assert jobs["stray"].image.warnings == read_image(tmp_path / "stray.jpg").warnings != ()
    assert "data_check_ms" in jobs["good"].timings
    # a check that breaks is that photo's failure, not its batch's (and never an unchecked output)
    from concurrent.futures import Future

    broken = Future()
    broken.set_exception(MemoryError("cannot allocate"))
    jobs["good"].image.data_check = broken
    assert _data_check_problem(jobs["good"]) == "its JPEG data could not be checked for damage (MemoryError: cannot allocate)"
    # 6 (more only contended on an H200's 16 cores), or every core but 2: the GPU codec
    # path's own threads mostly take turns on the GIL
    assert jpeg_check_threads(16) == 6 and jpeg_check_threads(4) == 2 and jpeg_check_threads(2) == 1


def test_default_workers_follow_the_container_cpu_quota(tmp_path, monkeypatch):
    # A container granted 1.5 cores of a 64-core host must not start 64 workers and 64
    # line-fit processes, each holding a full-resolution photo.
    from lens.runtime.cpu_budget import usable_cores

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    root, self_cgroup = tmp_path / "cgroup", tmp_path / "self_cgroup"
    (root / "kubepods" / "pod1").mkdir(parents=True)
    self_cgroup.write_text("0::/kubepods/pod1\n")
    assert usable_cores(root, self_cgroup) == 64  # no limit anywhere
    (root / "kubepods" / "pod1" / "cpu.max").write_text("max 100000\n")
    (root / "kubepods" / "cpu.max").write_text("150000 100000\n")  # a parent's limit applies too
    assert usable_cores(root, self_cgroup) == 2
    v1 = tmp_path / "v1"  # cgroup v1, as older Docker hosts mount it
    (v1 / "cpu,cpuacct").mkdir(parents=True)
    (v1 / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu,cpuacct" / "cpu.cfs_period_us").write_text("100000\n")
    self_cgroup.write_text("4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n")
    assert usable_cores(v1, self_cgroup) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})  # taskset / --cpuset-cpus
    assert usable_cores(v1, self_cgroup) == 2


def test_a_full_output_disk_stops_the_run_and_resume_goes_on(tmp_path, photos, monkeypatch):
    """Once the disk is full every later photo was still decoded, inferred and warped only to
    fail its write, each with its own line (thousands, for a large folder). The run now stops
    at the first, saying how to go on; --resume then completes it with the same bytes."""
    import errno

    from lens.runtime import runner as runner_module

    real, written = runner_module.write_atomic, []

    def filling_up(path, data, durable=False):
        if len(written) >= 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written.append(path)
        real(path, data, durable)

    monkeypatch.setattr(runner_module, "write_atomic", filling_up)
    out = tmp_path / "out"
    result = _run(photos, out, "--workers", "2", "--refine", "off")
    assert result.exit_code == 1
    said = " ".join(result.output.split())
    assert "No space left on device; stopped after" in said and "add --resume to the same command" in said
    records = [json.loads(line) for line in (out / "lens-run" / "images.jsonl.part").read_text().splitlines()]
    # three outputs fitted; the run stopped at the first that did not (a photo written while
    # an earlier one failed has no record yet: --resume redoes it)
    assert 1 <= sum(r["status"] == "ok" for r in records) <= 3 and len(records) < 9  # not every photo tried
    assert len(list(out.glob("*.jpg"))) == 3 and not list(out.glob(".*.part"))
    monkeypatch.undo()
    assert _run(photos, out, "--workers", "2", "--refine", "off", "--resume").exit_code == 0
    assert _run(photos, tmp_path / "clean", "--workers", "2", "--refine", "off").exit_code == 0
    assert _outputs(out) == _outputs(tmp_path / "clean")


def test_other_commands_meeting_a_full_disk_say_so_in_a_line(tmp_path, photos, monkeypatch, capsys):
    """`lens qa --json` and `lens package` on a full disk ended in a traceback through zipfile
    or json, and the write's error named no file."""
    import errno

    from lens.cli import app

    assert _run(photos, tmp_path / "out", "--refine", "off").exit_code == 0
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, fd, *args, **kwargs):
            self.file = real_fdopen(fd, *args, **kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fdopen", FullDisk)  # what `write_atomic` writes through
    for command in (["qa", tmp_path / "out", "--inputs", photos, "--json", tmp_path / "qa.json"],
                    ["package", tmp_path / "out", "--inputs", photos, "--out", tmp_path / "sub.zip"]):
        with pytest.raises(SystemExit) as stop:
            app([str(a) for a in command], prog_name="lens")
        assert stop.value.code == 1
        said = " ".join(capsys.readouterr().err.split())
        assert f"error: No space left on device writing {tmp_path}" in said and "free some space and run the command again" in said, said
        assert "Traceback" not in said
    assert not [p for p in tmp_path.iterdir() if p.is_file()]  # nothing half-written


def test_available_memory_follows_the_machine_and_the_container_limit(tmp_path):
    from lens.runtime.held_photos import available_memory

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       65000000 kB\nMemFree:         1000000 kB\nMemAvailable:   40000000 kB\n")
    root, self_cgroup = tmp_path / "cgroup", tmp_path / "self_cgroup"
    pod = root / "kubepods" / "pod1"
    pod.mkdir(parents=True)
    self_cgroup.write_text("0::/kubepods/pod1\n")
    (pod / "memory.max").write_text("max\n")
    assert available_memory(meminfo, root, self_cgroup) == 40000000 * 1024  # no limit: the machine's
    # an 8 GiB pod using 5 GiB, 2 GiB of it file cache the kernel would reclaim first
    (root / "kubepods" / "memory.max").write_text(f"{8 << 30}\n")
    (root / "kubepods" / "memory.current").write_text(f"{5 << 30}\n")
    (root / "kubepods" / "memory.stat").write_text(f"anon {3 << 30}\ninactive_file {2 << 30}\n")
    assert available_memory(meminfo, root, self_cgroup) == 5 << 30
    v1 = tmp_path / "v1"  # cgroup v1: "no limit" is a number near 2^63
    (v1 / "memory" / "docker" / "abc").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (v1 / "memory" / "docker" / "abc" / "memory.limit_in_bytes").write_text(f"{4 << 30}\n")
    (v1 / "memory" / "docker" / "abc" / "memory.usage_in_bytes").write_text(f"{1 << 30}\n")
    self_cgroup.write_text("4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n")
    assert available_memory(meminfo, v1, self_cgroup) == 3 << 30
    assert available_memory(tmp_path / "absent", tmp_path / "none", tmp_path / "none") is None  # not Linux: no cap


def test_a_run_short_of_memory_holds_fewer_photos_and_writes_the_same_bytes(tmp_path, monkeypatch):
    """Decoded photos read ahead for 2 x workers x batch, plus the batches in flight: ~800 of
    them for --batch 16 and 16 workers, ~58 GB of 24 MP photos. Past the memory a run may
    fill, it reads ahead less instead of being killed, with the same outputs."""
    from lens.runtime import pipeline

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, name in enumerate(["rocket.jpg", "coffee.jpg", "astronaut.jpg"] * 3):
        Image.fromarray(cv2.resize(_small(name, 320), (320, 240))).save(photos / f"p{i:02d}.jpg", quality=92)
    largest = 320 * 240 * 3
    assert _run(photos, tmp_path / "free", "--workers", "4", "--refine", "off").exit_code == 0
    free = json.loads((tmp_path / "free" / "lens-run" / "summary.json").read_text())["held_photos"]
    assert free["peak"] > 3 and not free["capped"] and free["budget_bytes"] > 0
    monkeypatch.setattr(pipeline, "held_photos_budget", lambda: int(3.5 * largest))
    result = _run(photos, tmp_path / "short", "--workers", "4", "--refine", "off")
    assert result.exit_code == 0
    short = json.loads((tmp_path / "short" / "lens-run" / "summary.json").read_text())["held_photos"]
    assert short["capped"] and short["peak"] <= 3 and short["largest_photo_bytes"] == largest
    assert "memory held the run back: it held at most" in " ".join(result.output.split())
    assert _outputs(tmp_path / "short") == _outputs(tmp_path / "free")


def test_a_build_that_is_old_incomplete_or_damaged_is_refused_with_the_command_to_fix_it(tmp_path, photos):
    # the CPU graph was once one file, lens_cpu.onnx (at first taking the full image and
    # returning full-size maps); the runtime now runs its two halves
    from onnx import TensorProto, helper, save

    build = tmp_path / "build"
    build.mkdir()
    for name in ("manifest.json", "checkpoint.pt", ONNX_FULL):
        shutil.copy(DEFAULT_BUILD / name, build / name)
    graph = helper.make_graph(
        [helper.make_node("Cast", ["image"], ["maps"], to=TensorProto.FLOAT), helper.make_node("Identity", ["mode_override"], ["mode"])], "old",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["B", 3, "H", "W"]), helper.make_tensor_value_info("mode_override", TensorProto.INT64, ["B"])],
        [helper.make_tensor_value_info("maps", TensorProto.FLOAT, ["B", 3, "H", "W"]), helper.make_tensor_value_info("mode", TensorProto.INT64, ["B"])])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(build / ONNX_CPU_WHOLE))
    result = _run(photos, tmp_path / "out", "--build", build, "--device", "cpu")
    assert result.exit_code == 2
    assert "exported by an older lens; export it again: lens export --checkpoint" in result.output.replace("\n", " ")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.jpg"))
    (build / ONNX_CPU_WHOLE).unlink()  # half a build: one half copied, the other not
    shutil.copy(DEFAULT_BUILD / ONNX_CPU_NETWORK, build / ONNX_CPU_NETWORK)
    result = _run(photos, tmp_path / "out", "--build", build, "--device", "cpu")
    assert result.exit_code == 2 and f"has no {ONNX_CPU_WARP}" in result.output.replace("\n", " ")
    # a graph cut short by an interrupted copy, and one a bit off its manifest's bytes: each
    # ran (or crashed ONNX Runtime's loader with a traceback) while the summary reported the
    # manifest's hash as the model that made the outputs
    data = (DEFAULT_BUILD / ONNX_CPU_WARP).read_bytes()
    for broken in (data[: len(data) // 2], data[:-1] + bytes([data[-1] ^ 1])):
        (build / ONNX_CPU_WARP).write_bytes(broken)
        result = _run(photos, tmp_path / "out", "--build", build, "--device", "cpu")
        assert result.exit_code == 2 and f"{ONNX_CPU_WARP} is not the graph its manifest lists" in result.output.replace("\n", " "), result.output
    (build / "manifest.json").write_text("{cut")
    result = _run(photos, tmp_path / "out", "--build", build, "--device", "cpu")
    assert result.exit_code == 2 and "manifest.json is not valid JSON" in result.output.replace("\n", " ")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.jpg"))
