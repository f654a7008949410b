"""QA gates for a folder of predictions. Each gate has a reason code and lists the files it
caught; nothing leaves without passing all of them.

Gates, in order: ``id_set`` (missing, extra and badly named files), ``decodes``,
``same_size`` (as its input), ``not_identical`` (to its input), ``border`` (no black or
constant-fill band or corner that its input does not have), ``regional_difference`` (no
catastrophic change of a region compared with the input), ``run_metadata`` (`lens run`'s
records present, none hard-unsafe).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from lens.qa.ids import ENTRY_RE, input_files, read_ids
from lens.runtime.io import IMAGE_SUFFIXES, ImageReadError, read_image
from lens.runtime.metadata import RUN_DIR, MetadataUnreadable, read_run_metadata

IDENTICAL_MAE = 0.5  # grey levels: below this a "correction" changed nothing
BAND_STD = 1.5  # a row/column whose pixels vary less than this is constant fill
MAX_BAND_PX = 1  # bands wider than this fail (one constant row can be a real edge)
CORNER_PX = 12  # a fully black square this big in a corner is an unfilled corner
BLACK_LEVEL = 8
SAME_FILL_GREY = 8.0  # a band is the input's own when the input has one at that edge within this many grey levels
EDGES = ("top", "bottom", "left", "right")
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
REGION_GRID = 4
REGION_FAIL_GREY = 90.0  # an undistortion moves pixels, it does not replace a region


@dataclass
class GateResult:
    name: str
    passed: bool = True
    files: list[dict] = field(default_factory=list)  # {"file", "reason"}
    note: str = ""

    def fail(self, file: str, reason: str) -> None:
        self.passed = False
        self.files.append({"file": file, "reason": reason})


@dataclass
class QAReport:
    pred_dir: str
    gates: list[GateResult]
    expected_ids: int
    checked_files: int
    extremes: list[dict] = field(default_factory=list)  # most extreme corrections first

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def failures(self) -> list[dict]:
        return [{"gate": g.name, **f} for g in self.gates for f in g.files]

    def to_dict(self) -> dict:
        return {
            "pred_dir": self.pred_dir,
            "passed": self.passed,
            "expected_ids": self.expected_ids,
            "checked_files": self.checked_files,
            "gates": [{"name": g.name, "passed": g.passed, "note": g.note, "files": g.files} for g in self.gates],
            "extremes": self.extremes,
        }


def _edge_bands(grey: np.ndarray) -> list[tuple[int, float]]:
    """Per edge (`EDGES` order): how many rows or columns from it are constant fill (up to
    ``MAX_BAND_PX + 3``), and their mean grey level."""
    bands = []
    for lines in (grey, grey[::-1], grey.T, grey.T[::-1]):
        head = lines[: max(4, MAX_BAND_PX + 3)]
        stds = head.std(axis=1)
        n = 0
        while n < len(stds) and stds[n] < BAND_STD:
            n += 1
        bands.append((n, float(head[:n].mean()) if n else 0.0))
    return bands


def _black_corners(grey: np.ndarray) -> list[bool]:
    """Per corner (`CORNERS` order): whether a `CORNER_PX` square there is black."""
    c = CORNER_PX
    return [int(corner.max()) < BLACK_LEVEL for corner in (grey[:c, :c], grey[:c, -c:], grey[-c:, :c], grey[-c:, -c:])]


def border_problem(grey: np.ndarray, input_grey: np.ndarray | None = None) -> tuple[str | None, list[str]]:
    """The border gate's reason for a prediction ``grey``, or None; and what it let through as
    its input's own: a band or black corner that the input (same size) has at the same place,
    with the same fill. A photo's own content looks like fill: a night sky or a studio's black
    background in a corner, a blown-out sky along the top (the bundled portrait's corner is
    black). An undistortion samples a corner or an edge from near the same corner or edge of its
    input, so only fill that the input lacks there is the warp's."""
    own_bands = _edge_bands(input_grey) if input_grey is not None else None
    own_corners = _black_corners(input_grey) if input_grey is not None else None
    excused = []
    for k, (width, level) in enumerate(_edge_bands(grey)):
        if width <= MAX_BAND_PX:
            continue
        if own_bands and own_bands[k][0] > MAX_BAND_PX and abs(own_bands[k][1] - level) <= SAME_FILL_GREY:
            excused.append(f"constant {EDGES[k]} edge")
            continue
        return f"constant_border: a {width}-px constant-fill band at the {EDGES[k]} edge", excused
    for k, black in enumerate(_black_corners(grey)):
        if not black:
            continue
        if own_corners and own_corners[k]:
            excused.append(f"black {CORNERS[k]} corner")
            continue
        return f"black_corner: a black {CORNER_PX}x{CORNER_PX} {CORNERS[k]} corner", excused
    return None, excused


def _regional_difference(a: np.ndarray, b: np.ndarray) -> float:
    g = REGION_GRID
    small_a = cv2.resize(a, (64 * g, 48 * g), interpolation=cv2.INTER_AREA).astype(np.float32)
    small_b = cv2.resize(b, (64 * g, 48 * g), interpolation=cv2.INTER_AREA).astype(np.float32)
    return float(np.abs(small_a - small_b).reshape(g, 48, g, 64).mean(axis=(1, 3)).max())


def _grey(pixels: np.ndarray) -> np.ndarray:
    return pixels[..., 0] if pixels.shape[2] == 1 else cv2.cvtColor(np.ascontiguousarray(pixels[..., :3]), cv2.COLOR_RGB2GRAY)


def run_gates(pred_dir: str | Path, inputs_dir: str | Path, ids_file: str | Path | None = None,
              require_metadata: bool = True, on_file=None) -> QAReport:
    """Check ``pred_dir`` against the inputs (``<id>.jpg`` or ``<id>_original.jpg``) and,
    if given, the exact id list; ``require_metadata`` makes `lens run`'s records mandatory."""
    pred_dir, inputs_dir = Path(pred_dir), Path(inputs_dir)
    inputs = input_files(inputs_dir)
    expected = read_ids(ids_file) if ids_file else sorted(inputs)
    id_gate, decode_gate, size_gate = GateResult("id_set"), GateResult("decodes"), GateResult("same_size")
    ident_gate, border_gate, region_gate = GateResult("not_identical"), GateResult("border"), GateResult("regional_difference")
    meta_gate = GateResult("run_metadata")

    files = sorted(p for p in pred_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    present: dict[str, Path] = {}
    for p in files:
        if not ENTRY_RE.match(p.name):
            id_gate.fail(p.name, "bad_name: a submission entry is <id>.jpg (flat, lowercase .jpg, no spaces)")
            continue
        present[p.name[:-4]] = p
    for image_id in expected:
        if image_id not in present:
            id_gate.fail(f"{image_id}.jpg", "missing")
    expected_set = set(expected)
    for image_id in sorted(present.keys() - expected_set):
        id_gate.fail(present[image_id].name, "extra: not an expected id")
    # a `lens run --recursive` folder: a submission is flat, so what lies below is not checked
    nested = sorted(p.relative_to(pred_dir).as_posix() for p in pred_dir.rglob("*")
                    if p.is_file() and p.parent != pred_dir and RUN_DIR not in p.relative_to(pred_dir).parts and p.suffix.lower() in IMAGE_SUFFIXES)
    if nested:
        shown = _first_few(nested)
        id_gate.note = f"{len(nested)} image(s) in subfolders not checked nor packaged (a submission is flat): {shown}"

    extremes = []
    inherited = []  # predictions whose band or black corner is their input's own
    checked = 0
    for image_id in sorted(present.keys() & expected_set):
        pred_path = present[image_id]
        checked += 1
        try:
            pred = read_image(pred_path).pixels
        except ImageReadError as exc:
            decode_gate.fail(pred_path.name, f"does_not_decode: {exc.reason}")
            if on_file:
                on_file()
            continue
        src_path = inputs.get(image_id)
        grey = _grey(pred)
        src_grey = None
        if src_path is not None:
            try:
                src = read_image(src_path).pixels
            except ImageReadError as exc:
                size_gate.fail(pred_path.name, f"input_unreadable: {exc.reason}")
                src = None
            if src is not None:
                if src.shape[:2] != pred.shape[:2]:
                    size_gate.fail(pred_path.name, f"size_mismatch: {pred.shape[1]}x{pred.shape[0]}, input is {src.shape[1]}x{src.shape[0]}")
                else:
                    src_grey = _grey(src)
                    mae = float(np.abs(grey.astype(np.float32) - src_grey).mean())
                    extremes.append({"id": image_id, "file": pred_path.name, "input": str(src_path), "change": mae})
                    if mae < IDENTICAL_MAE:
                        ident_gate.fail(pred_path.name, f"identical_to_input: mean difference {mae:.2f} grey levels")
                    region = _regional_difference(grey, src_grey)
                    if region > REGION_FAIL_GREY:
                        region_gate.fail(pred_path.name, f"regional_difference: a region differs by {region:.0f} grey levels on average")
        problem, excused = border_problem(grey, src_grey)
        if problem:
            border_gate.fail(pred_path.name, problem)
        if excused:
            inherited.append(f"{pred_path.name} ({', '.join(excused)})")
        if on_file:
            on_file()

    if inherited:
        shown = _first_few(inherited)
        border_gate.note = f"the input's own fill, so not the warp's: {shown}"
    _check_run_metadata(meta_gate, pred_dir, {i: present[i] for i in present.keys() & expected_set}, extremes, require_metadata)
    # Most extreme first: by the run's largest displacement where every image has one, else by
    # how much the image changed.
    by_disp = bool(extremes) and all("max_displacement_px" in e for e in extremes)
    extremes.sort(key=lambda e: (-(e["max_displacement_px"] if by_disp else e["change"]), e["id"]))
    return QAReport(str(pred_dir), [id_gate, decode_gate, size_gate, ident_gate, border_gate, region_gate, meta_gate], len(expected), checked, extremes)


def _first_few(names: list[str], n: int = 5) -> str:
    """The first ``n`` names, and how many more."""
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _check_run_metadata(gate: GateResult, pred_dir: Path, checked: dict[str, Path], extremes: list[dict], require_metadata: bool) -> None:
    """The run_metadata gate over the ``checked`` predictions (id -> file), and each run
    record's largest displacement added to ``extremes``."""
    try:
        records, _ = read_run_metadata(pred_dir)
    except MetadataUnreadable as exc:  # present but damaged: fails even where metadata is not required
        gate.fail(exc.file, f"metadata_unreadable: {exc.reason}")
        return
    if records is None:
        if require_metadata:
            gate.fail("lens-run/images.jsonl", "metadata_missing: no `lens run` records beside the images")
        else:
            gate.note = "no run metadata (not required without --strict)"
        return
    for image_id in sorted(checked):
        rec = records.get(image_id)
        if rec is None:
            gate.fail(checked[image_id].name, "metadata_missing: no run record for this image")
        elif rec.get("hard_unsafe"):
            gate.fail(checked[image_id].name, f"hard_unsafe: {', '.join(rec.get('reasons', [])) or 'flagged by the run'}")
    # not a failure: DJI drones' photos give the same warning whole
    warned = [checked[i].name for i in sorted(checked) if (records.get(i) or {}).get("decode_warnings")]
    if warned:
        shown = _first_few(warned)
        gate.note = f"inputs decoded in spite of libjpeg's warning (a camera's padding, or damage that garbles the rest): look at {shown}"
    by_id = {e["id"]: e for e in extremes}
    for image_id, rec in records.items():
        if image_id in by_id and rec.get("max_displacement_px") is not None:
            by_id[image_id]["max_displacement_px"] = rec["max_displacement_px"]
