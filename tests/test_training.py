"""Training side on tiny data: synthesis, pseudo-labels, stages with resume, eval, audit."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from lens.cli import app
from lens.geometry import LensParams, distortion_grid, optimal_new_camera
from lens.training.pseudo_label import fit_pair
from lens.training.scenes import render_scene
from lens.training.synth import LATTICE_STEP, make_pairs, pair_grids, sample_params

runner = CliRunner(env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
SAMPLES = Path(__file__).resolve().parents[1] / "samples"
TINY = ["--steps", "4", "--batch", "4", "--pool-size", "16", "--val-size", "8", "--val-every", "2"]


def test_scenes_and_params_are_seeded_and_regimes_respected():
    assert np.array_equal(render_scene(3, 64, 96), render_scene(3, 64, 96))
    w = sample_params("workload", 200, np.random.default_rng(0))
    assert torch.all(w[:, 2:5] == 0) and torch.all(w[:, 5] == 1) and torch.all(w[:, 6:] == 0)
    assert -0.35 <= w[:, 0].min() and w[:, 0].max() <= 0 and 0 <= w[:, 1].min() <= w[:, 1].max() <= 0.6
    g = sample_params("general", 200, np.random.default_rng(0))
    assert (g[:, 0] > 0).any() and (g[:, 5] != 1).any() and (g[:, 3] != 0).any()
    assert torch.equal(sample_params("general", 5, np.random.default_rng(1)), sample_params("general", 5, np.random.default_rng(1)))


def test_lattice_synthesis_matches_the_exact_map():
    p = sample_params("general", 4, np.random.default_rng(2), 320, 480)
    fast = pair_grids(p, 320, 480).distorted.double()
    exact, _ = distortion_grid(p.double(), optimal_new_camera(p.double(), 320, 480, alpha=1.0), 320, 480)
    assert (fast - exact).abs().amax().item() * 479 / 2 < 0.05
    assert LATTICE_STEP == 8


def test_pseudo_label_recovers_known_parameters_within_0_3_px():
    # 100 and 107: lenses on which L-BFGS moving (k1, k2) themselves stopped 0.7 px off and
    # ran off to k1 = -1.8 (tools/pseudo_label_accuracy.py draws more)
    h, w = 1024, 1536
    for seed, k1, k2 in ((11, -0.25, 0.35), (12, -0.1, 0.1), (100, -0.1271, 0.1619), (107, -0.0946, 0.1054)):
        params = LensParams(k1=k1, k2=k2).to_tensor()
        src = torch.from_numpy(render_scene(seed, h, w)).permute(2, 0, 1)[None].float()
        distorted, target = make_pairs(src, params)
        u8 = lambda x: x[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()  # noqa: E731
        fit = fit_pair(u8(distorted), u8(target))
        # Endpoint error at the workload's resolution (2048 px wide).
        epe = fit.epe_px(params, round(2048 * h / w), 2048)
        assert epe < 0.3, (k1, k2, fit, epe)
        if seed == 11:  # a label is a function of the pair alone: the same again, bit for bit
            assert fit_pair(u8(distorted), u8(target)) == fit


def test_three_stages_chain_resume_and_record_provenance(tmp_path):
    run = tmp_path / "run"
    for stage in ("param", "hybrid", "finetune"):
        result = runner.invoke(app, ["train", "--stage", stage, "--run", str(run), *TINY])
        assert result.exit_code == 0, result.output
    ckpt = torch.load(run / "finetune" / "best.pt", weights_only=True)
    assert ckpt["stage"] == "finetune" and ckpt["parent"]["stage"] == "hybrid"
    assert ckpt["parent"]["path"].endswith("hybrid/best.pt") and len(ckpt["parent"]["sha256"]) == 64
    assert {"epe_mean", "epe_median", "epe_p95"} <= set(ckpt["val_metrics"]) and ckpt["data_fingerprint"] and ckpt["git_commit"]
    assert ckpt["train_config"]["seed"] == 0


def test_a_resumed_stage_needs_only_its_own_checkpoint(tmp_path):
    # a run carried to a lent GPU takes the stage it trains, not its parent's files
    run = tmp_path / "run"
    two = [x if x != "4" else "2" for x in TINY]
    assert runner.invoke(app, ["train", "--stage", "param", "--run", str(run), *TINY]).exit_code == 0
    assert runner.invoke(app, ["train", "--stage", "hybrid", "--run", str(run), *two]).exit_code == 0
    parent = torch.load(run / "hybrid" / "last.pt", weights_only=True)["parent"]
    (run / "param" / "best.pt").unlink()
    result = runner.invoke(app, ["train", "--stage", "hybrid", "--run", str(run), *TINY])
    assert result.exit_code == 0, result.output
    last = torch.load(run / "hybrid" / "last.pt", weights_only=True)
    assert last["step"] == 4 and last["parent"] == parent and parent["stage"] == "param"


def test_training_is_reproducible_and_resume_continues_exactly(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert runner.invoke(app, ["train", "--stage", "param", "--run", str(a), *TINY]).exit_code == 0
    # b: stop after 2 of 4 steps, then resume to 4.
    two = [x if x != "4" else "2" for x in TINY]
    assert runner.invoke(app, ["train", "--stage", "param", "--run", str(b), *two]).exit_code == 0
    last = torch.load(b / "param" / "last.pt", weights_only=True)
    assert last["step"] == 2
    assert runner.invoke(app, ["train", "--stage", "param", "--run", str(b), *TINY]).exit_code == 0
    wa = torch.load(a / "param" / "last.pt", weights_only=True)["model"]
    wb = torch.load(b / "param" / "last.pt", weights_only=True)["model"]
    # The 2-step run scheduled its learning rate for 2 steps, so only the resumed data order and
    # step count are comparable: the same config twice is bit-identical.
    c = tmp_path / "c"
    assert runner.invoke(app, ["train", "--stage", "param", "--run", str(c), *TINY]).exit_code == 0
    wc = torch.load(c / "param" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wc[k]) for k in wa)
    assert torch.load(b / "param" / "last.pt", weights_only=True)["step"] == 4 and set(wb) == set(wa)


def test_sigterm_saves_the_step_it_stopped_at_and_the_same_command_resumes(tmp_path, monkeypatch):
    # a scheduler's stop or `timeout` sends SIGTERM: the step in progress finishes, its state is
    # saved, and running the command again carries on from it (a GPU lent for minutes at a
    # time trains one run over several sessions this way)
    import os
    import signal
    import subprocess
    import sys
    import time

    import lens.training.train as training

    run = tmp_path / "run"
    history = run / "param" / "history.jsonl"
    command = [sys.executable, "-m", "lens", "train", "--stage", "param", "--run", str(run), "--steps", "100000", "--batch", "4",
               "--pool-size", "16", "--val-size", "8", "--val-every", "1"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "200"})
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (history.exists() and len(history.read_text().splitlines()) >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 128 + signal.SIGTERM, output
    stopped = torch.load(run / "param" / "last.pt", weights_only=True)["step"]
    recorded = [json.loads(line)["step"] for line in history.read_text().splitlines()]
    assert stopped >= 2 and recorded == list(range(1, stopped + 1))  # nothing trained after the last save
    assert f"stopped by SIGTERM at step {stopped}" in output and "resumes" in output, output
    resumed = subprocess.run([str(stopped + 2) if arg == "100000" else arg for arg in command], capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert torch.load(run / "param" / "last.pt", weights_only=True)["step"] == stopped + 2
    assert [json.loads(line)["step"] for line in history.read_text().splitlines()] == list(range(1, stopped + 3))
    # once finished, the stage returns its figures without rendering its data again
    monkeypatch.setattr(training, "build_pool", lambda *a, **k: pytest.fail("a finished stage rendered its pool"))
    done = training.TrainConfig(stage="param", steps=stopped + 2, batch=4, pool_size=16, val_size=8, val_every=1)
    assert training.train(done, run) == torch.load(run / "param" / "best.pt", weights_only=True)["val_metrics"]


def test_eval_reports_model_and_both_baselines(tmp_path):
    run = tmp_path / "run"
    assert runner.invoke(app, ["train", "--stage", "param", "--run", str(run), *TINY]).exit_code == 0
    out = tmp_path / "eval.json"
    result = runner.invoke(app, ["eval", "--checkpoint", str(run / "param" / "best.pt"), "--data", "synthetic:workload", "--count", "8", "--json", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    assert set(summary["methods"]) == {"model", "model+lines", "identity", "best_fixed"}
    assert summary["methods"]["identity"]["epe_mean"] > 0 and summary["images"] == 8
    assert sum(summary["line_fit"].values()) == 8
    # every 8th image is the held-out photo: its errors are reported apart from the scenes'
    parts = summary["by_source"]
    assert {k: v["images"] for k, v in parts.items()} == {"scene": 7, "photo astronaut.jpg": 1}
    for name, m in summary["methods"].items():
        assert abs((7 * parts["scene"]["epe_mean"][name] + parts["photo astronaut.jpg"]["epe_mean"][name]) / 8 - m["epe_mean"]) < 1e-6
    assert "mean EPE on photo astronaut.jpg (1 image)" in result.output
    if any(code.startswith("refined") for code in summary["line_fit"]):  # held-out scenes: lines to fit
        assert summary["methods"]["model+lines"]["epe_mean"] < summary["methods"]["model"]["epe_mean"]
    assert abs(sum(summary["modes"].values()) - 1) < 1e-9
    # mistakes a user makes are said, not raised as tracebacks
    result = runner.invoke(app, ["eval", "--checkpoint", str(run / "param" / "best.pt"), "--data", "synthetic:workloads"])
    assert result.exit_code == 2 and "unknown regime 'workloads'" in result.output
    result = runner.invoke(app, ["train", "--stage", "hybrid", "--run", str(tmp_path / "fresh"), *TINY])
    assert result.exit_code == 2 and "fresh/param/best.pt does not exist: train that stage first" in result.output.replace("\n", " ")
    photos = tmp_path / "photos"  # a folder of photos, not of labelled pairs: said before any scene is rendered
    photos.mkdir()
    (photos / "a.jpg").write_bytes((SAMPLES / "coffee.jpg").read_bytes())
    result = runner.invoke(app, ["train", "--stage", "param", "--run", str(tmp_path / "p"), "--pairs", str(photos), *TINY])
    assert result.exit_code == 2 and "no labelled pairs to train on in its training split (0 pairs): a folder of" in result.output.replace("\n", " ")


def test_data_and_train_commands_refuse_a_file_as_folder_and_a_folder_without_pairs(tmp_path):
    # train and data synth stopped on NotADirectoryError / FileExistsError tracebacks; pseudo-label
    # wrote an empty labels.jsonl into a folder of photos and said "0 labels made"
    photo = tmp_path / "a.jpg"
    photo.write_bytes((SAMPLES / "coffee.jpg").read_bytes())
    result = runner.invoke(app, ["train", "--stage", "param", "--run", str(photo), *TINY])
    assert result.exit_code == 2 and "is a file" in result.output, result.output
    result = runner.invoke(app, ["data", "synth", str(photo), "--count", "1"])
    assert result.exit_code == 2 and "is a file" in result.output, result.output
    result = runner.invoke(app, ["data", "pseudo-label", str(tmp_path)])
    assert result.exit_code == 2 and "no pairs to label" in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg"]


def test_data_synth_audit_and_pseudo_label_on_the_workload_layout(tmp_path):
    data = tmp_path / "pairs"
    assert runner.invoke(app, ["data", "synth", str(data), "--count", "4", "--width", "384", "--height", "256"]).exit_code == 0
    assert len(list(data.glob("*_original.jpg"))) == 4 and (data / "labels.jsonl").exists()
    (data / "orphan_original.jpg").write_bytes((next(data.glob("*_original.jpg"))).read_bytes())
    (data / "broken_g0_original.jpg").write_bytes(b"junk")
    (data / "broken_g0_generated.jpg").write_bytes(b"junk")
    first = sorted(data.glob("synth-*_original.jpg"))[0]
    (data / "same_g0_original.jpg").write_bytes(first.read_bytes())  # a "correction" that did nothing
    (data / "same_g0_generated.jpg").write_bytes(first.read_bytes())
    (data / "cut_g0_original.jpg").write_bytes(first.read_bytes()[:-3000])  # a truncated download
    (data / "cut_g0_generated.jpg").write_bytes(first.read_bytes())
    data_bytes = first.read_bytes()  # damaged in its compressed data, its end marker intact
    middle = (data_bytes.index(b"\xff\xda") + len(data_bytes)) // 2
    (data / "damaged_g0_original.jpg").write_bytes(data_bytes[:middle] + data_bytes[middle + 200 :])
    (data / "damaged_g0_generated.jpg").write_bytes(data_bytes)
    small = tmp_path / "small.jpg"
    Image.open(first).resize((192, 128)).save(small)
    (data / "shrunk_g0_original.jpg").write_bytes(first.read_bytes())
    (data / "shrunk_g0_generated.jpg").write_bytes(small.read_bytes())
    result = runner.invoke(app, ["data", "audit", str(data), "--json", str(tmp_path / "audit.json")])
    assert result.exit_code == 1
    report = json.loads((tmp_path / "audit.json").read_text())
    assert report["pairs"] == 9 and report["unmatched"] == ["orphan_original.jpg"]
    unreadable = {u["file"]: u for u in report["unreadable"]}
    assert sorted(unreadable) == ["broken_g0_original.jpg", "cut_g0_original.jpg", "damaged_g0_original.jpg"]
    assert "corrupt JPEG data" in json.dumps(unreadable["damaged_g0_original.jpg"])
    assert report["sizes"] == {"384x256": 6}  # the stored size, not the thumbnail's decoding scale
    assert report["size_mismatch"] == [{"pair_id": "shrunk_g0", "original": [384, 256], "generated": [192, 128]}]
    assert report["near_identical"] == ["same_g0"]
    for name in ("broken", "same", "cut", "shrunk", "damaged"):
        for p in data.glob(f"{name}_g0_*.jpg"):
            p.unlink()
    (data / "orphan_original.jpg").unlink()
    result = runner.invoke(app, ["data", "pseudo-label", str(data), "--limit", "2"])
    assert result.exit_code == 0, result.output
    labels = [json.loads(line) for line in (data / "labels.jsonl").read_text().splitlines()]
    assert all("fit_residual_grey" in r and r["source"] == "pseudo-label" for r in labels[:2])
    assert [r["source"] for r in labels[2:]] == ["synthetic:workload"] * 2  # the pairs not fitted keep their labels
    # a held-out folder of one shoot: its validation split is empty, which is said, and --split all evaluates it
    default = Path(__file__).resolve().parents[1] / "lens" / "assets" / "models" / "default" / "checkpoint.pt"
    result = runner.invoke(app, ["eval", "--checkpoint", str(default), "--data", str(data)])
    assert result.exit_code == 2 and "--split all" in result.output, result.output
    result = runner.invoke(app, ["eval", "--checkpoint", str(default), "--data", str(data), "--split", "all", "--json", str(tmp_path / "eval.json")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "eval.json").read_text())
    assert summary["images"] == 4 and summary["split"] == "all"
    # a hand-broken label line is named with its line number (eval said only "Expecting
    # property name...", pseudo-label stopped with a traceback)
    good_labels = (data / "labels.jsonl").read_bytes()
    (data / "labels.jsonl").write_bytes(good_labels + b'{"pair_id": "x", cut\n')
    for args in (["data", "pseudo-label", str(data)], ["eval", "--checkpoint", str(default), "--data", str(data), "--split", "all"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "labels.jsonl, line 5: not a label" in result.output.replace("\n", " "), (args, result.output)
    (data / "labels.jsonl").write_bytes(good_labels)
    # the metadata saved by an editor with a byte-order mark still decides the shoots; a cut
    # file is named (every command stopped with a JSONDecodeError traceback)
    meta = data / "training_metadata.json"
    meta.write_bytes(b"\xef\xbb\xbf" + meta.read_bytes())
    assert runner.invoke(app, ["data", "audit", str(data)]).exit_code == 0
    meta.write_bytes(meta.read_bytes()[:40])
    for args in (["data", "audit", str(data)], ["data", "pseudo-label", str(data)], ["eval", "--checkpoint", str(default), "--data", str(data)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "training_metadata.json: not the workload's metadata" in result.output, (args, result.output)


def test_pseudo_labels_survive_an_interruption_and_resume_to_the_same_file(tmp_path):
    """~5 s a pair: a real folder takes a day. A killed run keeps every label made, and
    --resume ends with the file an uninterrupted run writes, whatever the number of workers."""
    data, reference = tmp_path / "pairs", tmp_path / "reference"
    for folder in (data, reference):
        assert runner.invoke(app, ["data", "synth", str(folder), "--count", "4", "--width", "384", "--height", "256"]).exit_code == 0
        (folder / "labels.jsonl").unlink()  # real pairs come without labels
    assert runner.invoke(app, ["data", "pseudo-label", str(reference), "--workers", "1"]).exit_code == 0
    cmd = [sys.executable, "-m", "lens", "data", "pseudo-label", str(data), "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = data / "labels.jsonl.part"
    deadline = time.time() + 120
    while time.time() < deadline and not (progress.exists() and progress.read_text().count("\n") >= 1):
        time.sleep(0.02)
    proc.kill()
    proc.wait(60)
    assert 1 <= progress.read_text().count("\n") < 4, "not killed mid-way"
    result = runner.invoke(app, ["data", "pseudo-label", str(data), "--resume", "--workers", "2"])
    assert result.exit_code == 0 and "already pseudo-labelled (--resume)" in result.output, result.output
    assert (data / "labels.jsonl").read_bytes() == (reference / "labels.jsonl").read_bytes()
    assert not progress.exists()


def test_shoot_grouped_split_keeps_shoots_together():
    from lens.training.pairs import Pair, split_by_shoot

    pairs = [Pair(f"s{s}_g{g}", None, None, f"s{s}") for s in range(40) for g in range(3)]
    train, val = split_by_shoot(pairs, 0.25)
    assert not {p.shoot for p in train} & {p.shoot for p in val} and val and train
    # a shoot named in Latin-1 bytes (os.fsdecode's surrogate escapes) is placed, not a crash
    latin = [Pair(os.fsdecode(b"K\xfcche%d" % s), None, None, os.fsdecode(b"K\xfcche%d" % s)) for s in range(40)]
    assert sum(map(len, split_by_shoot(latin, 0.25))) == 40


def test_device_pool_draws_the_same_batches_and_history_records_the_curve(tmp_path):
    from lens.training.batches import build_pool, draw_batch, pool_on_device

    pool = build_pool(8, 0, ("rocket.jpg",), width=240)
    assert pool[0].shape == (160, 240, 3)
    tensor_pool = pool_on_device(pool, "cpu")  # the GPU path's code, run on the CPU
    for seed in (0, 4, 5):  # aspect ratios 0.667, 1.5 (portrait) and 0.747; flips inside
        a = draw_batch(pool, 4, np.random.default_rng(seed), 0.5)
        b = draw_batch(tensor_pool, 4, np.random.default_rng(seed), 0.5)
        assert torch.equal(a.params, b.params) and a.images.shape == b.images.shape
        assert (a.images - b.images).abs().mean() < 1.0  # OpenCV INTER_AREA vs torch antialias
    result = runner.invoke(app, ["train", "--stage", "param", "--run", str(tmp_path), *TINY, "--backbone", "small-hr", "--input-width", "96"])
    assert result.exit_code == 0, result.output
    history = [json.loads(line) for line in (tmp_path / "param" / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [2, 4] and all(h["epe_mean"] > 0 and h["pairs"] == 4 * h["step"] for h in history)
    again = runner.invoke(app, ["train", "--stage", "param", "--run", str(tmp_path), *TINY, "--backbone", "small-hr", "--input-width", "96", "--no-resume"])
    assert again.exit_code == 0, again.output
    assert [json.loads(line)["step"] for line in (tmp_path / "param" / "history.jsonl").read_text().splitlines()] == [2, 4]
    ckpt = torch.load(tmp_path / "param" / "best.pt", weights_only=True)
    assert ckpt["model_config"]["backbone"] == "small-hr" and ckpt["model_config"]["input_width"] == 96
    refused = runner.invoke(app, ["train", "--stage", "param", "--run", str(tmp_path / "g"), *TINY, "--cuda-graphs"])
    assert refused.exit_code == 2 and "--cuda-graphs needs --device cuda" in refused.output


def test_labelled_pairs_supervise_training_and_badly_fitted_ones_are_left_out(tmp_path):
    """`lens train --pairs`: the training split of a folder of labelled pairs (a pseudo-labelled
    real dataset) trains the model through its labels; pairs whose fit residual says the
    parametric warp does not explain them are left out, and the checkpoint records the data."""
    from lens.training.pairs import find_pairs, split_by_shoot

    data = tmp_path / "pairs"
    assert runner.invoke(app, ["data", "synth", str(data), "--count", "12", "--width", "192", "--height", "128"]).exit_code == 0
    train_ids = [p.pair_id for p in split_by_shoot(find_pairs(data)[0])[0]]
    assert len(train_ids) >= 2
    labels = [json.loads(line) for line in (data / "labels.jsonl").read_text().splitlines()]
    for r in labels:
        if r["pair_id"] == train_ids[0]:
            r["fit_residual_grey"] = 9.0  # a retouched target the lens does not explain
    (data / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labels))
    args = ["train", "--stage", "param", "--steps", "2", "--batch", "4", "--pool-size", "8", "--val-size", "8", "--val-every", "2",
            "--pairs", str(data), "--pairs-share", "1.0"]
    result = runner.invoke(app, [*args, "--run", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert f"pairs: {len(train_ids) - 1} labelled pairs" in result.output and "1 with a fit residual over 2.5 grey levels left out" in result.output
    a = torch.load(tmp_path / "a" / "param" / "last.pt", weights_only=True)
    assert a["train_config"]["pairs_dir"] == str(data) and "+pairs:" in a["data_fingerprint"]
    for r in labels:  # other labels, the same images: other weights
        r["params"]["k1"] -= 0.2
    (data / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labels))
    assert runner.invoke(app, [*args, "--run", str(tmp_path / "b")]).exit_code == 0
    b = torch.load(tmp_path / "b" / "param" / "last.pt", weights_only=True)
    assert any(not torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    (data / "labels.jsonl").unlink()
    result = runner.invoke(app, [*args, "--run", str(tmp_path / "c")])
    assert result.exit_code == 2 and "no labelled pairs to train on" in result.output


def test_held_out_shoots_of_the_pairs_folder_pick_the_best_checkpoint(tmp_path):
    """With --pairs, the labelled pairs of the folder's held-out shoots (those `lens eval --data`
    evaluates) are validated on as training goes, and their error, not the synthetic pairs',
    picks best.pt: the checkpoint a user ships is the one best on their own kind of photos."""
    data = tmp_path / "pairs"
    # 40 pairs in 10 shoots: one shoot (4 pairs) falls in the held-out side of the hash split
    assert runner.invoke(app, ["data", "synth", str(data), "--count", "40", "--width", "192", "--height", "128"]).exit_code == 0
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--stage", "param", "--steps", "4", "--batch", "4", "--pool-size", "8", "--val-size", "8",
                                 "--val-every", "1", "--pairs", str(data), "--run", str(run)])
    assert result.exit_code == 0, result.output
    assert "best.pt is picked on 4 labelled pairs of its held-out shoots" in result.output
    assert "--pairs' held-out shoots" in result.output
    history = [json.loads(line) for line in (run / "param" / "history.jsonl").read_text().splitlines()]
    assert len(history) == 4 and all("pairs_epe_mean" in h and "epe_mean" in h for h in history)
    best = torch.load(run / "param" / "best.pt", weights_only=True)
    assert best["best_by"] == "pairs_epe_mean"
    assert best["val_metrics"]["pairs_epe_mean"] == pytest.approx(min(h["pairs_epe_mean"] for h in history), abs=1e-4)
    assert "+val-pairs:" in best["data_fingerprint"]
