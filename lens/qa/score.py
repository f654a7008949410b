"""A proxy of the workload's per-image score (0..100), vectorised with OpenCV and numpy.

Components and weights (DESIGN.md):

- edge similarity, 40%: Canny edge F1 with a 1-pixel tolerance, averaged over three scales;
- line straightness, 22%: length-weighted angle histograms of Hough line segments, compared by
  histogram intersection;
- gradient orientation, 18%: magnitude-weighted orientation histograms, intersection;
- SSIM, 15%;
- pixel MAE, 5%: ``1 - MAE / 64`` clipped at 0.

Hard fails zero an image: a large regional difference (a 4 x 4 cell whose mean absolute
difference exceeds 60 grey levels) or a collapsed edge map (fewer than 10% of the target's
edges). Everything is computed on grey images 1024 px wide: the official scorer's exact
resolution is unknown and this keeps scoring above 5 images/s on two cores.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from lens.qa.metrics import ssim, to_grey

WEIGHTS = {"edge": 0.40, "line": 0.22, "gradient": 0.18, "ssim": 0.15, "mae": 0.05}
WORK_WIDTH = 1024
EDGE_SCALES = (1.0, 0.5, 0.25)
REGION_GRID = 4
REGION_FAIL_GREY = 60.0
EDGE_COLLAPSE_RATIO = 0.10
ANGLE_BINS = 36


@dataclass
class ImageScore:
    score: float
    edge: float
    line: float
    gradient: float
    ssim: float
    mae: float
    hard_fail: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _canny(grey: np.ndarray) -> np.ndarray:
    blurred = cv2.GaussianBlur(grey, (5, 5), 1.0)
    med = float(np.median(blurred))
    return cv2.Canny(blurred.astype(np.uint8), max(10.0, 0.66 * med), max(30.0, 1.33 * med)) > 0


def _edge_f1(pred_edges: np.ndarray, gt_edges: np.ndarray) -> float:
    kernel = np.ones((3, 3), np.uint8)  # 1-pixel tolerance
    gt_near = cv2.dilate(gt_edges.astype(np.uint8), kernel) > 0
    pred_near = cv2.dilate(pred_edges.astype(np.uint8), kernel) > 0
    n_pred, n_gt = pred_edges.sum(), gt_edges.sum()
    if n_pred == 0 or n_gt == 0:
        return float(n_pred == n_gt)
    precision = (pred_edges & gt_near).sum() / n_pred
    recall = (gt_edges & pred_near).sum() / n_gt
    return float(0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))


def _hist_intersection(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = a.sum(), b.sum()
    if sa == 0 or sb == 0:
        return float(sa == sb)
    return float(np.minimum(a / sa, b / sb).sum())


def _line_hist(edges: np.ndarray) -> np.ndarray:
    lines = cv2.HoughLinesP(edges.astype(np.uint8) * 255, 1, np.pi / 180, threshold=40, minLineLength=edges.shape[1] // 20, maxLineGap=3)
    if lines is None:
        return np.zeros(ANGLE_BINS)
    x1, y1, x2, y2 = lines.reshape(-1, 4).T.astype(np.float64)
    angle = np.mod(np.arctan2(y2 - y1, x2 - x1), np.pi)
    length = np.hypot(x2 - x1, y2 - y1)
    return np.histogram(angle, bins=ANGLE_BINS, range=(0, np.pi), weights=length)[0]


def _gradient_hist(grey: np.ndarray) -> np.ndarray:
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    magnitude, angle = cv2.cartToPolar(gx, gy)  # angle in [0, 2 pi)
    bins = (np.mod(angle, np.pi) * (ANGLE_BINS / np.pi)).astype(np.int32).clip(0, ANGLE_BINS - 1)
    return np.bincount(bins.ravel(), weights=magnitude.ravel(), minlength=ANGLE_BINS)


def _regional_difference(a: np.ndarray, b: np.ndarray) -> float:
    h, w = a.shape
    g = REGION_GRID
    diff = np.abs(a - b)[: h - h % g, : w - w % g]
    return float(diff.reshape(g, diff.shape[0] // g, g, diff.shape[1] // g).mean(axis=(1, 3)).max())


def read_grey(path) -> np.ndarray:
    """Decode straight to a grey image at least WORK_WIDTH wide: libjpeg's DCT scaling
    decodes a 2048 px JPEG at half size in ~60% of the full decode's time."""
    from PIL import Image

    from lens.runtime.io import ImageReadError

    try:
        with Image.open(path) as img:
            width = img.size[0]
    except Exception as exc:
        raise ImageReadError(path, f"not a readable image: {exc}") from None
    flag = cv2.IMREAD_REDUCED_GRAYSCALE_4 if width >= 4 * WORK_WIDTH else cv2.IMREAD_REDUCED_GRAYSCALE_2 if width >= 2 * WORK_WIDTH else cv2.IMREAD_GRAYSCALE
    # imdecode of the bytes, not imread(path): OpenCV's imread crashes the process on a name
    # that is not UTF-8 (a segmentation fault in 5.0) and misreads non-ASCII names on Windows
    try:
        grey = cv2.imdecode(np.fromfile(path, np.uint8), flag)
    except OSError as exc:
        raise ImageReadError(path, f"cannot read: {exc.strerror or exc}") from None
    if grey is None:
        raise ImageReadError(path, "corrupt or truncated image")
    return to_grey(grey, WORK_WIDTH)


def score_pair(pred_rgb: np.ndarray, gt_rgb: np.ndarray) -> ImageScore:
    """Score a prediction against its target (RGB or grey uint8 arrays; sizes may differ, the
    prediction is compared after resizing to the target's working size)."""
    gt = to_grey(gt_rgb, WORK_WIDTH)
    pred = to_grey(pred_rgb, WORK_WIDTH)
    if pred.shape != gt.shape:
        pred = cv2.resize(pred, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_AREA)
    edge_f1s, pred_full, gt_full = [], None, None
    for s in EDGE_SCALES:
        size = (max(8, round(gt.shape[1] * s)), max(8, round(gt.shape[0] * s)))
        pe = _canny(cv2.resize(pred, size, interpolation=cv2.INTER_AREA) if s != 1 else pred)
        ge = _canny(cv2.resize(gt, size, interpolation=cv2.INTER_AREA) if s != 1 else gt)
        if s == 1:
            pred_full, gt_full = pe, ge
        edge_f1s.append(_edge_f1(pe, ge))
    parts = {
        "edge": float(np.mean(edge_f1s)),
        "line": _hist_intersection(_line_hist(pred_full), _line_hist(gt_full)),
        "gradient": _hist_intersection(_gradient_hist(pred), _gradient_hist(gt)),
        "ssim": max(0.0, ssim(pred, gt)),
        "mae": max(0.0, 1.0 - float(np.abs(pred - gt).mean()) / 64.0),
    }
    total = 100.0 * sum(WEIGHTS[k] * v for k, v in parts.items())
    hard_fail = None
    if _regional_difference(pred, gt) > REGION_FAIL_GREY:
        hard_fail = "regional_difference"
    elif gt_full.sum() > 0 and pred_full.sum() < EDGE_COLLAPSE_RATIO * gt_full.sum():
        hard_fail = "edge_collapse"
    return ImageScore(0.0 if hard_fail else total, hard_fail=hard_fail, **parts)


def relative_score(pred: float, uncorrected: float) -> float:
    """Score rescaled so that the uncorrected input gets 0 and a perfect match 100 (the
    official scorer gives the uncorrected input about 0); negative means worse than doing
    nothing."""
    if uncorrected >= 100.0:
        return 0.0
    return 100.0 * (pred - uncorrected) / (100.0 - uncorrected)


def score_folder(pred_dir, gt_dir, inputs_dir=None, workers: int = 2, on_image=None) -> tuple[list[dict], dict]:
    """Score every ``<id>.jpg`` in ``pred_dir`` against ``gt_dir`` (``<id>.jpg`` or
    ``<id>_generated.jpg``), and the uncorrected inputs too when ``inputs_dir`` is given.
    Returns per-image rows (sorted by id) and a summary. A prediction without a target, or
    whose target cannot be read, is not scored (``score`` None; the summary lists it under
    ``without_target`` or ``target_unreadable``): a zero for it would pull the mean down as a
    hard fail does, for the data's fault, not the prediction's. An unreadable prediction is a
    hard fail. OpenCV releases the GIL, so threads use both cores."""
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    from lens.qa.ids import TARGET_SUFFIXES, find_by_id, input_files
    from lens.runtime.io import ImageReadError

    preds = sorted(p for p in Path(pred_dir).iterdir() if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png") and not p.name.startswith("."))
    inputs = input_files(inputs_dir) if inputs_dir is not None else {}  # by id, as `lens run` named their corrections

    def one(pred: Path) -> dict:
        image_id = pred.stem
        row: dict = {"id": image_id}
        gt = find_by_id(gt_dir, image_id, TARGET_SUFFIXES)
        if gt is None:  # nothing to score against: left out of the means, counted apart
            row.update(score=None, error=f"no target {image_id}.jpg or {image_id}_generated.jpg in {gt_dir}")
            if on_image:
                on_image()
            return row
        try:
            gt_grey = read_grey(gt)
        except ImageReadError as exc:
            row.update(score=None, target_unreadable=True, error=f"target unreadable: {exc}")
        else:
            try:
                row.update(score_pair(read_grey(pred), gt_grey).to_dict())
                src = inputs.get(image_id)
            except ImageReadError as exc:
                row.update(score=0.0, hard_fail="unreadable", error=str(exc))
                src = None
            if src is not None:
                try:
                    row["uncorrected_score"] = score_pair(read_grey(src), gt_grey).score
                    row["relative_score"] = relative_score(row["score"], row["uncorrected_score"])
                except ImageReadError as exc:
                    row["error"] = f"input unreadable, no relative score: {exc}"
        if on_image:
            on_image()
        return row

    with ThreadPoolExecutor(max(1, workers)) as pool:
        rows = list(pool.map(one, preds))
    scored = [r for r in rows if r["score"] is not None]
    summary = {
        "images": len(scored),
        "mean_score": float(np.mean([r["score"] for r in scored])) if scored else None,
        "hard_fails": sum(1 for r in scored if r.get("hard_fail")),
        "without_target": [r["id"] for r in rows if r["score"] is None and not r.get("target_unreadable")],
        "target_unreadable": [r["id"] for r in rows if r.get("target_unreadable")],
        "weights": WEIGHTS,
    }
    rel = [r["relative_score"] for r in rows if "relative_score" in r]
    if rel:
        summary["mean_uncorrected_score"] = float(np.mean([r["uncorrected_score"] for r in rows if "uncorrected_score" in r]))
        summary["mean_relative_score"] = float(np.mean(rel))
    return rows, summary
