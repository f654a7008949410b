"""`lens score`, `lens qa`, `lens package` as a user runs them."""
import base64
import json
import re
import zipfile
from html.parser import HTMLParser

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lens.cli import app
from lens.geometry import IDENTITY, optimal_new_camera, parametric_grid
from lens.qa.score import score_pair
from lens.runtime.io import DecodedImage, write_image
from lens.runtime.sampling import warp_with_grid
from lens.training.batches import synthetic_samples

runner = CliRunner(env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})


def _correct(original: np.ndarray, params: torch.Tensor) -> np.ndarray:
    h, w = original.shape[:2]
    grid = parametric_grid(params, optimal_new_camera(params.double(), h, w).float(), h, w)
    return warp_with_grid(original, grid[0].numpy())


@pytest.fixture(scope="module")
def pairs():
    return list(synthetic_samples("workload", 4, seed=11, width=768, height=512))


def test_score_ranks_uncorrected_below_target_and_is_monotonic_in_error(pairs):
    identity = torch.tensor([IDENTITY])
    for s in pairs:
        assert score_pair(s.target, s.target).score == pytest.approx(100.0, abs=1e-6)
        uncorrected = score_pair(s.original, s.target).score
        # Corrections of increasing error: the true warp blended towards doing nothing.
        scores = [score_pair(_correct(s.original, s.params + t * (identity - s.params)), s.target).score for t in (0.0, 0.3, 0.6)]
        assert scores[0] > uncorrected
        assert scores == sorted(scores, reverse=True), scores


@pytest.fixture()
def submission(tmp_path, pairs):
    """inputs/<id>.jpg distorted, pred/<id>.jpg corrected with the true parameters."""
    inputs, pred = tmp_path / "inputs", tmp_path / "pred"
    for i, s in enumerate(pairs):
        write_image(inputs / f"img{i}.jpg", DecodedImage(s.original))
        write_image(pred / f"img{i}.jpg", DecodedImage(_correct(s.original, s.params)))
    return inputs, pred


def test_score_cli_writes_csv_and_relative_scores(tmp_path, submission, pairs):
    inputs, pred = submission
    gt = tmp_path / "gt"
    for i, s in enumerate(pairs):
        write_image(gt / f"img{i}_generated.jpg", DecodedImage(s.target))
    (pred / "stray.jpg").write_bytes((pred / "img0.jpg").read_bytes())  # no target: not scored, not a zero in the mean
    result = runner.invoke(app, ["score", str(pred), str(gt), "--inputs", str(inputs), "--csv", str(tmp_path / "s.csv"), "--json", str(tmp_path / "s.json")])
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0].startswith("id,score,relative_score") and len(lines) == 6
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["images"] == 4 and summary["hard_fails"] == 0 and summary["without_target"] == ["stray"]
    assert "not scored, no target" in result.output and "stray" in result.output
    assert summary["mean_score"] > summary["mean_uncorrected_score"]
    assert summary["mean_relative_score"] > 50
    # a target that cannot be read is the data's fault: left out of the mean and named, where
    # it counted as a hard fail of the prediction (0 points)
    (gt / "img1_generated.jpg").write_bytes((gt / "img1_generated.jpg").read_bytes()[:300])
    result = runner.invoke(app, ["score", str(pred), str(gt), "--json", str(tmp_path / "s2.json")])
    assert result.exit_code == 0 and "its target cannot be read" in result.output
    cut = json.loads((tmp_path / "s2.json").read_text())
    assert cut["images"] == 3 and cut["hard_fails"] == 0 and cut["target_unreadable"] == ["img1"]
    # nothing scored at all (a wrong folder) fails
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["score", str(pred), str(tmp_path / "empty")])
    assert result.exit_code == 1 and "nothing scored" in result.output


def test_qa_passes_a_clean_submission_and_writes_a_report_with_thumbnails(tmp_path, submission):
    inputs, pred = submission
    report = tmp_path / "qa.html"
    result = runner.invoke(app, ["qa", str(pred), "--inputs", str(inputs), "--no-require-metadata", "--report", str(report), "--json", str(tmp_path / "qa.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "qa.json").read_text())["passed"] is True

    class Images(HTMLParser):
        srcs: list = []

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.srcs.append(dict(attrs)["src"])

    parser = Images()
    parser.srcs = []
    parser.feed(report.read_text())
    assert len(parser.srcs) == 8  # before and after for each of the 4 images
    for src in parser.srcs:
        data = base64.b64decode(src.split(",", 1)[1])
        thumb = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert thumb is not None and thumb.shape[1] == 360


def test_qa_and_strict_package_name_missing_wrong_size_and_corrupt_files(tmp_path, submission):
    inputs, pred = submission
    (pred / "img0.jpg").unlink()  # missing
    img = cv2.imread(str(pred / "img1.jpg"))
    cv2.imwrite(str(pred / "img1.jpg"), img[:-10])  # wrong size
    data = (pred / "img2.jpg").read_bytes()
    (pred / "img2.jpg").write_bytes(data[: len(data) // 3])  # corrupt
    # damaged in its compressed data, its end marker intact: it decodes with a grey bottom
    data = (pred / "img3.jpg").read_bytes()
    middle = (data.index(b"\xff\xda") + len(data)) // 2
    (pred / "img3.jpg").write_bytes(data[:middle] + data[middle + 200 :])
    result = runner.invoke(app, ["qa", str(pred), "--inputs", str(inputs), "--no-require-metadata", "--json", str(tmp_path / "qa.json")])
    assert result.exit_code == 1
    out = result.output
    assert re.search(r"img0\.jpg: missing", out)
    assert re.search(r"img1\.jpg: size_mismatch", out)
    assert re.search(r"img2\.jpg: does_not_decode", out)
    assert re.search(r"img3\.jpg: does_not_decode: corrupt JPEG data", out)
    zip_path = tmp_path / "submission.zip"
    result = runner.invoke(app, ["package", str(pred), "--out", str(zip_path), "--inputs", str(inputs), "--strict"])
    assert result.exit_code == 1
    for name in ("img0.jpg", "img1.jpg", "img2.jpg", "img3.jpg"):
        assert name in result.output
    assert "nothing was packaged" in result.output
    assert not zip_path.exists()
    assert not list(tmp_path.glob(".submission.zip*"))


def test_qa_fails_damaged_run_metadata_naming_the_file_and_line(tmp_path, submission):
    # read_run_metadata raised a JSONDecodeError traceback; a damaged record file now fails
    # the run_metadata gate, even where metadata is not required
    inputs, pred = submission
    (pred / "lens-run").mkdir()
    (pred / "lens-run" / "images.jsonl").write_bytes(b'{"id": "img0", "status": "ok"}\n{"id": "img1", "sta\xff\n')
    result = runner.invoke(app, ["qa", str(pred), "--inputs", str(inputs), "--no-require-metadata", "--json", str(tmp_path / "qa.json")])
    assert result.exit_code == 1, result.output
    assert "lens-run/images.jsonl: metadata_unreadable: line 2 is not JSON" in result.output.replace("\n", " "), result.output
    result = runner.invoke(app, ["package", str(pred), "--out", str(tmp_path / "s.zip"), "--inputs", str(inputs), "--force"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "s.zip.manifest.json").read_text())
    assert manifest["forced"] and manifest["run"] is None


def test_qa_names_outputs_whose_input_decoded_with_a_warning_without_failing_them(tmp_path, submission):
    # libjpeg says the same of a DJI drone's padding as of damage that garbles the photo
    inputs, pred = submission
    (pred / "lens-run").mkdir()
    said = "corrupt JPEG data: 9 extraneous bytes before marker 0xd9 (libjpeg)"
    records = [{"id": p.stem, "status": "ok", "decode_warnings": [said] if p.stem == "img1" else []} for p in sorted(pred.glob("*.jpg"))]
    (pred / "lens-run" / "images.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = runner.invoke(app, ["qa", str(pred), "--inputs", str(inputs), "--json", str(tmp_path / "qa.json")])
    assert result.exit_code == 0, result.output
    assert "inputs decoded in spite of libjpeg's warning (a camera's padding, or damage that garbles the rest): look at img1.jpg" \
        in " ".join(result.output.split())


def test_an_output_path_naming_a_folder_or_going_through_a_file_is_refused_before_any_work(tmp_path, submission):
    # --json / --csv / --report onto a folder stopped on an IsADirectoryError traceback, after
    # the whole run of gates or scores
    inputs, pred = submission
    for args in (["qa", str(pred), "--inputs", str(inputs), "--no-require-metadata", "--json", str(tmp_path)],
                 ["qa", str(pred), "--inputs", str(inputs), "--no-require-metadata", "--report", str(tmp_path)],
                 ["score", str(pred), str(pred), "--csv", str(tmp_path)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "is a directory" in result.output, (args, result.output)
    # ... or a path through a file: FileExistsError / NotADirectoryError after the work
    through = pred / "img0.jpg" / "submission.zip"
    for args in (["package", str(pred), "--out", str(through), "--inputs", str(inputs), "--force"],
                 ["qa", str(pred), "--inputs", str(inputs), "--json", str(through)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "img0.jpg, which is a file, not a folder" in " ".join(result.output.replace("│", " ").split()), (args, result.output)


def test_qa_catches_black_borders_unchanged_images_bad_names_and_extras(tmp_path, submission):
    inputs, pred = submission
    img = cv2.imread(str(pred / "img0.jpg"))
    img[:6] = 0
    cv2.imwrite(str(pred / "img0.jpg"), img)  # black band
    (pred / "img1.jpg").write_bytes((inputs / "img1.jpg").read_bytes())  # uncorrected
    (pred / "img3.jpg").rename(pred / "img3.JPG")  # bad name (and so img3 is missing)
    (pred / "stray.jpg").write_bytes((inputs / "img2.jpg").read_bytes())  # extra
    result = runner.invoke(app, ["qa", str(pred), "--inputs", str(inputs), "--no-require-metadata", "--json", str(tmp_path / "qa.json")])
    assert result.exit_code == 1
    report = json.loads((tmp_path / "qa.json").read_text())
    caught = {(g["name"], f["file"]) for g in report["gates"] for f in g["files"]}
    assert ("border", "img0.jpg") in caught
    assert ("not_identical", "img1.jpg") in caught
    assert ("id_set", "img3.JPG") in caught and ("id_set", "img3.jpg") in caught
    assert ("id_set", "stray.jpg") in caught


def test_qa_lets_a_photos_own_black_corner_and_blown_out_sky_through_but_not_fill_it_lacks(tmp_path, pairs):
    """A night sky or black background in a corner and a white sky along the top are the
    photo's content: its correction keeps them, and QA must not fail it for that (the
    bundled portrait's corner is black). Fill the input does not have is still caught."""
    inputs, pred = tmp_path / "inputs", tmp_path / "pred"
    for i, s in enumerate(pairs[:3]):
        original = s.original.copy()
        h, w = original.shape[:2]
        original[: h // 8] = 255  # blown-out sky along the top
        original[h // 2 :, w * 2 // 3 :] = 0  # a black background in the bottom-right corner
        write_image(inputs / f"img{i}.jpg", DecodedImage(original))
        corrected = _correct(original, s.params)
        if i == 1:
            corrected[:6] = 0  # black fill along the top, where the input is white
        if i == 2:
            corrected[:16, :16] = 0  # a black top-left corner, where the input is white
        write_image(pred / f"img{i}.jpg", DecodedImage(corrected))
    result = runner.invoke(app, ["qa", str(pred), "--inputs", str(inputs), "--no-require-metadata", "--json", str(tmp_path / "qa.json")])
    assert result.exit_code == 1, result.output
    border = next(g for g in json.loads((tmp_path / "qa.json").read_text())["gates"] if g["name"] == "border")
    assert {f["file"]: f["reason"].split(":")[0] for f in border["files"]} == {"img1.jpg": "constant_border", "img2.jpg": "black_corner"}
    assert "img0.jpg (constant top edge, black bottom-right corner)" in border["note"]
    assert "img0.jpg (constant top edge, black bottom-right corner)" in result.output


def test_strict_qa_requires_run_metadata(tmp_path, submission):
    inputs, pred = submission
    result = runner.invoke(app, ["qa", str(pred), "--inputs", str(inputs), "--json", str(tmp_path / "qa.json")])
    assert result.exit_code == 1
    assert "metadata_missing" in result.output


def test_package_is_byte_identical_flat_stored_and_verified(tmp_path, submission):
    inputs, pred = submission
    zips = []
    for name in ("a.zip", "b.zip"):
        result = runner.invoke(app, ["package", str(pred), "--out", str(tmp_path / name), "--inputs", str(inputs)])
        assert result.exit_code == 0, result.output
        zips.append((tmp_path / name).read_bytes())
    assert zips[0] == zips[1]
    with zipfile.ZipFile(tmp_path / "a.zip") as zf:
        infos = zf.infolist()
        assert [i.filename for i in infos] == [f"img{i}.jpg" for i in range(4)]
        assert all(i.compress_type == zipfile.ZIP_STORED and i.date_time == (1980, 1, 1, 0, 0, 0) for i in infos)
        assert all((i.external_attr >> 16) & 0o777 == 0o644 for i in infos)
        assert zf.read("img0.jpg") == (pred / "img0.jpg").read_bytes()
    manifest = json.loads((tmp_path / "a.zip.manifest.json").read_text())
    assert manifest["entries"] == 4 and manifest["forced"] is False and manifest["qa"]["passed"] is True
    # a `lens run --recursive` folder: what lies in subfolders cannot enter a flat zip, and says so
    (pred / "listing2").mkdir()
    (pred / "listing2" / "img0.jpg").write_bytes((pred / "img0.jpg").read_bytes())
    result = runner.invoke(app, ["package", str(pred), "--out", str(tmp_path / "c.zip"), "--inputs", str(inputs)])
    assert result.exit_code == 0 and "1 image(s) in subfolders not checked nor packaged" in result.output and "listing2/img0.jpg" in result.output
    assert (tmp_path / "c.zip").read_bytes() == zips[0]
    # a zip written into the predictions folder passed once, then failed every later QA as
    # three badly named predictions (the zip, its manifest and QA record); a folder as --out
    # was a traceback
    before = sorted(p.name for p in pred.iterdir())
    for out, said in ((pred / "s.zip", "inside the predictions folder"), (tmp_path, "is a folder")):
        result = runner.invoke(app, ["package", str(pred), "--out", str(out), "--inputs", str(inputs)])
        assert result.exit_code == 2 and said in result.output, result.output
    assert sorted(p.name for p in pred.iterdir()) == before


def test_an_ids_file_from_any_editor_names_the_same_ids(tmp_path, submission):
    """Windows line ends, a byte-order mark (Excel's and Notepad's "UTF-8 with BOM"; the first id
    was read with it and reported missing, its file extra), names with .jpg, comments, blanks."""
    inputs, pred = submission
    forms = {"plain.txt": b"img0\nimg1\nimg2\nimg3\n", "crlf.txt": b"img0\r\nimg1\r\n\r\nimg2\r\nimg3\r\n",
             "bom.txt": b"\xef\xbb\xbfimg0\nimg1\nimg2\nimg3\n", "names.txt": b"# the shoot\nimg0.jpg\nimg1.jpg\nimg2.jpg\nimg3.jpg\n",
             # Excel's "Unicode Text" and Notepad's "Unicode": UTF-16 with its byte-order mark (a traceback before)
             "utf16.txt": "img0\r\nimg1\r\nimg2\r\nimg3\r\n".encode("utf-16"), "utf16be.txt": b"\xfe\xff" + "img0\nimg1\nimg2\nimg3\n".encode("utf-16-be")}
    for name, data in forms.items():
        (tmp_path / name).write_bytes(data)
        result = runner.invoke(app, ["qa", str(pred), "--inputs", str(inputs), "--ids", str(tmp_path / name), "--no-require-metadata", "--json", str(tmp_path / "qa.json")])
        assert result.exit_code == 0, (name, result.output)
    (tmp_path / "short.txt").write_bytes(b"\xef\xbb\xbfimg0\nimg1\nimg2\n")  # one id fewer: img3 is an extra
    result = runner.invoke(app, ["qa", str(pred), "--inputs", str(inputs), "--ids", str(tmp_path / "short.txt"), "--no-require-metadata", "--json", str(tmp_path / "qa.json")])
    assert result.exit_code == 1 and "img3.jpg: extra" in result.output and "missing" not in result.output
    (tmp_path / "latin1.txt").write_bytes("img0\ncaf\xe9\n".encode("latin-1"))  # neither: named, before any work
    result = runner.invoke(app, ["qa", str(pred), "--inputs", str(inputs), "--ids", str(tmp_path / "latin1.txt"), "--json", str(tmp_path / "l.json")])
    assert result.exit_code == 2 and "latin1.txt: not a text file of ids (UTF-8 or UTF-16)" in result.output.replace("\n", " "), result.output
    assert not (tmp_path / "l.json").exists()


def test_force_packages_past_failed_qa_and_records_it(tmp_path, submission):
    inputs, pred = submission
    (pred / "img0.jpg").unlink()
    result = runner.invoke(app, ["package", str(pred), "--out", str(tmp_path / "s.zip"), "--inputs", str(inputs), "--force"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "s.zip.manifest.json").read_text())
    assert manifest["forced"] is True
    assert {"gate": "id_set", "file": "img0.jpg", "reason": "missing"} in manifest["qa"]["failures"]


def test_entry_names_are_validated():
    from lens.qa.package import PackageError, validate_entry_name

    for bad in ("../x.jpg", "a/b.jpg", "x.JPG", "x y.jpg", "..jpg"):
        with pytest.raises(PackageError):
            validate_entry_name(bad)
    validate_entry_name("3f2a_g1.jpg")
