"""`lens undistort` as a user runs it."""
import cv2
import numpy as np
from PIL import Image, JpegImagePlugin
from typer.testing import CliRunner

from lens.cli import app

runner = CliRunner(env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})


def _run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_matches_cv2_undistort_on_a_real_photograph(tmp_path, photo_2048):
    src = tmp_path / "photo.png"
    cv2.imwrite(str(src), photo_2048)
    dst = tmp_path / "out.png"
    result = _run("undistort", src, dst, "--k1", "-0.2", "--k2", "0.4")
    assert result.exit_code == 0, result.output
    h, w = photo_2048.shape[:2]
    K = np.array([[w, 0, (w - 1) / 2], [0, w, (h - 1) / 2], [0, 0, 1.0]])
    D = np.array([-0.2, 0.4, 0, 0, 0.0])
    new_k, _ = cv2.getOptimalNewCameraMatrix(K, D, (w, h), 0)
    expected = cv2.undistort(photo_2048, K, D, None, new_k)
    diff = np.abs(cv2.imread(str(dst)).astype(int) - expected)
    assert diff.mean() < 0.1
    assert diff.max() <= 2


def test_folder_keeps_names_sizes_and_formats_and_reports_bad_files(tmp_path, photo_2048):
    src = tmp_path / "in"
    src.mkdir()
    small = cv2.resize(photo_2048, (320, 213))
    cv2.imwrite(str(src / "a.jpg"), small)
    cv2.imwrite(str(src / "b.png"), small[:200, :300])
    (src / "empty.jpg").write_bytes(b"")
    (src / "notes.jpg").write_text("not an image")
    cv2.imwrite(str(src / "a.tif"), small[:100])  # would be written as a.jpg, over a.jpg's correction
    out = tmp_path / "out"
    result = _run("undistort", src, out, "--k1", "-0.1")
    assert result.exit_code == 1
    assert "empty.jpg" in result.output and "empty file" in result.output
    assert "notes.jpg" in result.output and "not a readable image" in result.output
    assert "a.tif" in result.output and "output name a.jpg already taken by a.jpg" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg", "b.png"]  # no temp files left
    with Image.open(out / "a.jpg") as a:
        assert a.format == "JPEG" and a.size == (320, 213)
        assert JpegImagePlugin.get_sampling(a) == 0  # 4:4:4
    with Image.open(out / "b.png") as b:
        assert b.format == "PNG" and b.size == (300, 200)


def test_outputs_are_byte_identical_across_runs_and_keep_exif(tmp_path, photo_2048):
    src = tmp_path / "p.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW for display
    exif[0x010F] = "TestCam"
    Image.fromarray(photo_2048[:400, :600, ::-1]).save(src, exif=exif.tobytes(), quality=90)
    for name in ("one.jpg", "two.jpg"):
        assert _run("undistort", src, tmp_path / name, "--k1", "-0.2", "--k2", "0.4").exit_code == 0
    assert (tmp_path / "one.jpg").read_bytes() == (tmp_path / "two.jpg").read_bytes()
    with Image.open(tmp_path / "one.jpg") as out:
        assert out.getexif()[0x0112] == 6 and out.getexif()[0x010F] == "TestCam"
        assert out.size == (600, 400)  # stored orientation is kept; viewers rotate as for the input


def test_zoom_and_alpha_frame_the_output(tmp_path, photo_2048):
    src = tmp_path / "p.png"
    cv2.imwrite(str(src), photo_2048[:300, :400])
    assert _run("undistort", src, tmp_path / "a1.png", "--k1", "-0.3", "--alpha", "1").exit_code == 0
    assert _run("undistort", src, tmp_path / "z.png", "--k1", "-0.3", "--zoom", "1.0").exit_code == 0
    a1 = cv2.imread(str(tmp_path / "a1.png"))
    z = cv2.imread(str(tmp_path / "z.png"))
    # Barrel + alpha = 1 keeps every input pixel: the edge midpoints go black; zoom 1 keeps f.
    assert a1[0, 200].max() == 0 and a1[150, 0].max() == 0
    assert z[0, 200].max() > 0 and z[150, 0].max() > 0 and z.shape == a1.shape


def test_help_for_every_command_reads_and_exits_zero():
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0
    commands = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert "undistort" in commands
    for name in commands:
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0, name
        assert "Usage" in result.output


def test_missing_input_is_a_clear_usage_error(tmp_path):
    result = runner.invoke(app, ["undistort", str(tmp_path / "nope.jpg"), str(tmp_path / "o.jpg")])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_a_focal_length_that_is_not_positive_is_a_clear_usage_error(tmp_path, photo_2048):
    cv2.imwrite(str(tmp_path / "in.jpg"), photo_2048)
    result = runner.invoke(app, ["undistort", str(tmp_path / "in.jpg"), str(tmp_path / "o.jpg"), "--k1", "-0.2", "--focal", "0"])
    assert result.exit_code == 2 and "a focal length is a positive number of pixels" in result.output
    assert not (tmp_path / "o.jpg").exists()
    for option, value in (("--k1", "nan"), ("--p2", "inf"), ("--focal", "inf")):  # tracebacks from the first image
        result = runner.invoke(app, ["undistort", str(tmp_path / "in.jpg"), str(tmp_path / "o.jpg"), option, value])
        assert result.exit_code == 2 and f"Invalid value for {option}: a lens parameter is a finite number" in result.output, result.output
    assert not (tmp_path / "o.jpg").exists()


def test_an_output_named_for_a_format_it_is_not_written_in_is_refused(tmp_path, photo_2048):
    """JPEG bytes under a .tif or .heic name would mislead every program that opens them."""
    src = tmp_path / "photo.jpg"
    cv2.imwrite(str(src), cv2.resize(photo_2048, (320, 213)))
    for name in ("out.tif", "out.heic"):
        result = runner.invoke(app, ["undistort", str(src), str(tmp_path / name), "--k1", "-0.1"])
        assert result.exit_code == 2 and "name it .jpg, .jpeg or .png" in result.output, result.output
        assert not (tmp_path / name).exists()


def test_a_full_disk_stops_undistort_at_the_first_file_that_does_not_fit(tmp_path, photo_2048, monkeypatch, capsys):
    """Every later file was still read and warped, then failed its write with a line of its own."""
    import errno
    import os

    import pytest

    from lens import undistort

    src = tmp_path / "in"
    src.mkdir()
    for i in range(6):
        cv2.imwrite(str(src / f"p{i}.jpg"), cv2.resize(photo_2048, (160, 107)))
    real, tried = undistort.write_image, []

    def filling_up(path, image, quality=95):
        tried.append(path)
        if len(tried) > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, image, quality=quality)

    monkeypatch.setattr(undistort, "write_image", filling_up)
    with pytest.raises(SystemExit) as stop:
        app(["undistort", str(src), str(tmp_path / "out"), "--k1", "-0.1"], prog_name="lens")
    assert stop.value.code == 1 and len(tried) == 3
    said = " ".join(capsys.readouterr().err.split())
    assert f"error: No space left on device writing {tmp_path / 'out' / 'p2.jpg'}: free some space and run the command again" in said
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p0.jpg", "p1.jpg"]
