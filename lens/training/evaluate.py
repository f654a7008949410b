"""`lens eval`: warp endpoint error at native resolution against two baselines.

Methods: the network's warp ("model"), and that warp's lens refitted to the photo's straight
lines as `lens run` does by default ("model+lines", `lens.runtime.plumb_line`).

For every image: the model's warp (with its residual for hybrid / fine-tuned checkpoints) is
compared with the label's warp on a 17 x 25 lattice at the image's own resolution; the
corrected image is compared with the target by SSIM; the safety policy picks a mode. Two
baselines are computed in the same run: the identity warp, and the single fixed parameter set
that best fits the *training* split's labels (what a model that learned nothing but the mean
would do).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from lens.geometry import (
    IDENTITY,
    LensParams,
    conservative_params,
    fuse_residual,
    grid_safety_stats,
    optimal_new_camera,
    parametric_grid,
)
from lens.qa.metrics import ssim, to_grey
from lens.runtime.runner import fit_lines_checked
from lens.runtime.policy import MODES, SafetyThresholds, choose_mode
from lens.runtime.sampling import warp_with_grid
from lens.training.batches import SOURCE_W, Sample
from lens.training.losses import endpoint_error, warp_points
from lens.training.model import LensNet, to_model_input
from lens.training.synth import sample_params


def folder_eval_set(folder: str | Path, split: str = "val") -> tuple[torch.Tensor, Iterator[Sample], int]:
    """For `lens eval --data FOLDER`, the labelled pairs of a folder in the workload layout
    (`lens.training.pairs`): the labels ``(N, 8)`` the fixed baseline is fitted on, the samples
    evaluated and their count. ``split`` "val": the shoots `split_by_shoot` holds out, the
    baseline fitted on the others; "all": every pair (a held-out set), the baseline fitted on
    the same labels (an oracle). ValueError, saying why, where there is nothing to evaluate."""
    from lens.runtime.io import read_image
    from lens.training.pairs import LABELS_FILE, find_pairs, read_labels, split_by_shoot

    pairs, _ = find_pairs(folder)
    labels = read_labels(folder)
    train, val = split_by_shoot(pairs)
    chosen = {"train": train, "val": val, "all": pairs}
    labelled = {k: [p for p in v if p.pair_id in labels] for k, v in chosen.items()}
    if not labelled["all"]:
        raise ValueError(f"{folder}: no labelled pairs (`lens data pseudo-label` writes {LABELS_FILE})")
    if split == "val" and not (labelled["train"] and labelled["val"]):
        # a small folder's shoots may all land on one side (each goes to validation with probability 0.1)
        raise ValueError(f"{folder}: the shoot split leaves {len(labelled['val'])} labelled pair(s) for validation and {len(labelled['train'])} "
                         f"for the fixed baseline ({len({p.shoot for p in pairs})} shoots); --split all evaluates every pair")

    def params(pair) -> torch.Tensor:
        return LensParams(**labels[pair.pair_id]["params"]).to_tensor()

    def samples() -> Iterator[Sample]:
        for pair in labelled[split]:
            yield Sample(pair.pair_id, read_image(pair.original).pixels[..., :3], read_image(pair.generated).pixels[..., :3], params(pair))

    baseline = torch.cat([params(p) for p in labelled["train" if split == "val" else "all"]])
    return baseline, samples(), len(labelled[split])


def best_fixed_params(label_params: torch.Tensor, height: int = 1366, width: int = 2048) -> torch.Tensor:
    """``(1, 8)``: the one (k1, k2) [f = width, centred] minimising mean endpoint error over the
    given label set, by L-BFGS from the mean."""
    theta = label_params[:, :2].mean(dim=0).clone().requires_grad_(True)
    true = warp_points(label_params, height, width).detach()
    base = torch.tensor([IDENTITY], dtype=torch.float32)
    optim = torch.optim.LBFGS([theta], max_iter=50, line_search_fn="strong_wolfe")

    def fixed() -> torch.Tensor:
        return torch.cat([theta.unsqueeze(0), base[:, 2:]], dim=1)

    def closure():
        optim.zero_grad()
        pred = warp_points(fixed(), height, width).expand_as(true)
        loss = endpoint_error(pred, true, height, width).mean()
        loss.backward()
        return loss

    optim.step(closure)
    return fixed().detach()


def predict(model: LensNet, rgb: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Parameters ``(1, 8)`` and residual flow of one full-resolution RGB image."""
    image = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    aspect = torch.tensor([rgb.shape[0] / rgb.shape[1]])
    with torch.no_grad():
        return model(to_model_input(image, model.config.input_height, model.config.input_width), aspect)


def _stats(grid, flow=None) -> dict[str, float]:
    return {k: float(v) for k, v in grid_safety_stats(grid, flow, jacobian_stride=8).items()}


def _line_fit(rgb: np.ndarray, network: torch.Tensor) -> tuple[torch.Tensor | None, str]:
    """What `lens run` does with the network's parameters: the fitted lens ``(1, 8)`` when the
    fit is applied (else None), and the fit's code."""
    refined = fit_lines_checked(rgb, network[0].double().numpy(), SafetyThresholds())
    fitted = torch.tensor(refined.fit.params[None], dtype=torch.float32) if refined.applied else None
    return fitted, refined.as_dict()["code"]


def evaluate(model: LensNet, samples: Iterator[Sample], use_flow: bool, fixed: torch.Tensor,
             on_sample: Callable[[], None] | None = None, lines: bool = True) -> dict:
    """Per-method endpoint errors and similarities, and the share of images per mode.
    ``lines``: also the method "model+lines", the network's lens refitted to the photo's
    straight lines as `lens run` does (`lens.runtime.plumb_line`). Where the samples come from
    more than one source (synthetic data: procedural scenes and a held-out photo), the mean
    errors per source too (``by_source``): straight lines reveal a lens, a photo without them
    hardly does, and the two populations' errors differ by two orders of magnitude."""
    names = ("model", "model+lines", "identity", "best_fixed") if lines else ("model", "identity", "best_fixed")
    rows = {n: [] for n in names}
    sims = {n: [] for n in names}
    modes = dict.fromkeys(MODES, 0)
    line_codes: dict[str, int] = {}
    refitted: list[bool] = []
    sources: list[str] = []
    identity = torch.tensor([IDENTITY], dtype=torch.float32)
    for s in samples:
        sources.append(s.source)
        h, w = s.original.shape[:2]
        params, flow = predict(model, s.original)
        network = params
        true = warp_points(s.params, h, w)
        with torch.no_grad():
            param_grid = parametric_grid(params, optimal_new_camera(params, h, w), h, w)
            hybrid_grid = fuse_residual(param_grid, flow) if use_flow else None
            mode, _ = choose_mode(_stats(hybrid_grid, flow) if use_flow else None, _stats(param_grid))
        modes[mode] += 1
        if mode == "hybrid":
            model_grid, model_flow = hybrid_grid, flow
        elif mode == "param_only":
            model_grid, model_flow = param_grid, None
        else:
            cons = conservative_params(params)
            model_grid, model_flow = parametric_grid(cons, optimal_new_camera(cons, h, w), h, w), None
            params = cons
        methods = [("model", params, model_flow, model_grid), ("identity", identity, None, None), ("best_fixed", fixed, None, None)]
        if lines:
            fitted, code = _line_fit(s.original, network)
            line_codes[code] = line_codes.get(code, 0) + 1
            refitted.append(fitted is not None)
            if fitted is not None:
                methods.insert(1, ("model+lines", fitted, None, None))
        for name, p, f, grid in methods:
            rows[name].append(float(endpoint_error(warp_points(p, h, w, f), true, h, w)))
            if s.target is not None:
                if grid is None:
                    grid = parametric_grid(p, optimal_new_camera(p, h, w), h, w)
                out = warp_with_grid(s.original, grid[0].numpy())
                sims[name].append(ssim(to_grey(out, 512), to_grey(s.target, 512)))
        if lines and fitted is None:  # the network's warp stands: the same figures as "model"
            rows["model+lines"].append(rows["model"][-1])
            if s.target is not None:
                sims["model+lines"].append(sims["model"][-1])
        if on_sample:
            on_sample()
    n = len(rows["model"])
    summary = {"images": n, "modes": {m: c / max(1, n) for m, c in modes.items()}, "methods": {}}
    if lines:
        summary["line_fit"] = dict(sorted(line_codes.items()))
        used = np.array(rows["model+lines"])[np.array(refitted, dtype=bool)] if n else np.zeros(0)
        summary["line_fit_used"] = {"images": int(len(used)), "epe_mean": float(used.mean()) if len(used) else None,
                                    "epe_max": float(used.max()) if len(used) else None}
    for name, errs in rows.items():
        e = np.array(errs)
        summary["methods"][name] = {
            "epe_mean": float(e.mean()) if n else float("nan"),
            "epe_median": float(np.median(e)) if n else float("nan"),
            "epe_p95": float(np.percentile(e, 95)) if n else float("nan"),
            "ssim": float(np.mean(sims[name])) if sims[name] else None,
        }
    if len(set(sources)) > 1:
        labels, errors = np.array(sources), {name: np.array(errs) for name, errs in rows.items()}
        summary["by_source"] = {}
        for source in sorted(set(sources)):
            mask = labels == source
            summary["by_source"][source] = {"images": int(mask.sum()), "epe_mean": {name: float(e[mask].mean()) for name, e in errors.items()}}
    summary["best_fixed_params"] = LensParams.from_sequence(fixed[0].tolist()).as_dict()
    return summary


def training_label_params(ckpt: dict, regime: str, count: int = 2000) -> torch.Tensor:
    """The training split's label distribution for a synthetic regime, regenerated from the
    checkpoint's seed (training labels are parameter draws; no images are needed)."""
    seed = int(ckpt.get("seed", 0))
    return sample_params(regime, count, np.random.default_rng(seed + 104729), int(SOURCE_W * 2 / 3), SOURCE_W)
