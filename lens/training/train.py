"""The training loop: one function, read top to bottom.

Three stages share it (`TrainConfig.stage`):

- ``param``: the parameter head and backbone learn the lens; the residual is not used;
- ``hybrid``: starts from ``param``'s best; the fused grid (parameters + residual) is
  supervised, with residual smoothness and a Jacobian fold-over penalty;
- ``finetune``: starts from ``hybrid``'s best at a lower learning rate.

A run directory holds ``<stage>/last.pt`` (written every ``checkpoint_every`` steps, and when
Ctrl-C or SIGTERM stops the run, with the optimiser and random states, so an interrupted run
resumes exactly where it stopped) and
``<stage>/best.pt`` (best validation endpoint error: on the held-out synthetic pairs, or with
``pairs_dir`` on the labelled pairs of that folder's held-out shoots where it has any, whose
errors are recorded beside the synthetic ones as ``pairs_*``). Everything is seeded; on a CPU
the same config gives the same weights.
"""
from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from lens.training.batches import TRAIN_PHOTOS, VAL_PHOTOS, Batch, build_pool, draw_batch, fingerprint, plan_batch, pool_on_device
from lens.training.captured_step import CapturedTrainStep, make_optimizer
from lens.training.checkpoint import PARENT_STAGE, STAGES, git_commit, load_checkpoint, model_from_checkpoint, save_checkpoint, sha256_file
from lens.training.losses import endpoint_error, foldover_penalty, reference_size, smoothness, warp_points
from lens.training.model import LensNet, ModelConfig, to_model_input
from lens.training.pairs import draw_pair_batch, load_pair_pool, pair_batches


#: One line per validation in each stage folder: step, pairs seen, elapsed time, losses.
HISTORY_FILE = "history.jsonl"


@dataclass
class TrainConfig:
    stage: str = "param"
    steps: int = 2000
    batch: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    workload_share: float = 0.5  # share of each batch drawn from the workload regime
    pool_size: int = 512  # rendered training sources
    source_width: int = 0  # their width in pixels; 0: twice the model's input width
    val_size: int = 64  # validation pairs (held-out scenes and photo), drawn once
    val_every: int = 200
    checkpoint_every: int = 100
    smoothness_weight: float = 10.0
    foldover_weight: float = 1.0
    seed: int = 0
    threads: int = 0  # 0: torch's default
    device: str = "cpu"
    workers: int = 1  # processes rendering the source pool
    # Optional wall-clock budget: the schedule follows max(step / steps, elapsed / budget) and
    # training stops when it reaches 1. Runs with a budget are not bit-reproducible.
    time_budget_s: float = 0.0
    # Replay each step as a CUDA graph (`lens.training.captured_step`); CUDA only.
    cuda_graphs: bool = False
    # A folder of labelled pairs (`lens data pseudo-label`): this share of the steps trains on
    # its training split's inputs, supervised by their labels (`lens.training.pairs.load_pair_pool`)
    pairs_dir: str = ""
    pairs_share: float = 0.5
    max_fit_residual: float = 2.5  # grey levels: pairs the parametric warp explains worse are left out
    # Labelled pairs of the folder's held-out shoots validated on (at most; the first by id):
    # where there are any, their mean endpoint error picks ``best.pt``
    val_pairs: int = 256
    model: dict = field(default_factory=lambda: ModelConfig().to_dict())

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r}: choose from {STAGES}")
        if self.cuda_graphs and not self.device.startswith("cuda"):
            raise ValueError("--cuda-graphs needs --device cuda")
        if self.cuda_graphs and self.pairs_dir:
            raise ValueError("--cuda-graphs replays synthetic batches only: leave it out with --pairs")


class TrainingStopped(Exception):
    """Ctrl-C or SIGTERM ended a stage early, after a whole step; ``last.pt`` holds its state."""

    def __init__(self, stage: str, step: int, last: Path, signum: int):
        self.stage, self.step, self.last, self.signum = stage, step, last, signum
        super().__init__(f"{stage}: stopped by {signal.Signals(signum).name} at step {step}; state saved to {last}")


class _StopRequests:
    """Ctrl-C and SIGTERM (a scheduler's or ``timeout``'s stop) are noted, not raised, so the
    step in progress finishes and its state can be saved: a signal in the middle of an optimiser
    step would leave weights and moments out of step with each other. A second one stops at
    once. Only in the main thread, the only one Python delivers signals to."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _note(self, signum, frame) -> None:
        self.signum = signum
        for s, handler in self._previous.items():  # the next one takes the usual way
            signal.signal(s, handler)

    def __enter__(self) -> "_StopRequests":
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._note)
        return self

    def __exit__(self, *exc) -> None:
        if self.signum is None:
            for s, handler in self._previous.items():
                signal.signal(s, handler)


def _forward(model: LensNet, batch: Batch, use_flow: bool):
    cfg = model.config
    small = to_model_input(batch.images, cfg.input_height, cfg.input_width)
    params, flow = model(small, batch.aspect)
    # From the shape, not the aspect tensor: no host sync, so a CUDA graph can capture it.
    height, width = reference_size(batch.images.shape[-2] / batch.images.shape[-1])
    pred = warp_points(params, height, width, flow if use_flow else None)
    true = warp_points(batch.params, height, width)
    return params, flow, pred, true, height, width


def evaluate_batches(model: LensNet, batches: list[Batch], use_flow: bool) -> dict[str, float]:
    """Mean, median and p95 endpoint error in reference-resolution pixels."""
    model.eval()
    errs = []
    with torch.no_grad():
        for b in batches:
            _, _, pred, true, h, w = _forward(model, b, use_flow)
            errs.append(endpoint_error(pred, true, h, w))
    e = torch.cat(errs).cpu().numpy()
    return {"epe_mean": float(e.mean()), "epe_median": float(np.median(e)), "epe_p95": float(np.percentile(e, 95))}


class _LrSchedule:
    """lr = base * factor(step), set after every step; writes into a tensor learning rate in
    place (a captured optimiser reads it on the GPU). State: the step count."""

    def __init__(self, optim: torch.optim.Optimizer, base: float, factor: Callable[[int], float]):
        self.optim, self.base, self.factor, self.last_epoch = optim, base, factor, 0
        self._apply()

    def _apply(self) -> None:
        value = self.base * self.factor(self.last_epoch)
        for group in self.optim.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(value)
            else:
                group["lr"] = value

    def step(self) -> None:
        self.last_epoch += 1
        self._apply()

    def state_dict(self) -> dict:
        return {"last_epoch": self.last_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.last_epoch = int(state["last_epoch"])
        self._apply()


def _rng_state(rng: np.random.Generator) -> dict:
    return rng.bit_generator.state


def _finished(state: dict, config: TrainConfig) -> bool:
    """Whether a ``last.pt`` state reached its stage's steps or time budget."""
    return state["step"] >= config.steps or bool(config.time_budget_s and state.get("elapsed_s", 0.0) >= config.time_budget_s)


def train(config: TrainConfig, run_dir: str | Path, parent: str | Path | None = None, resume: bool = True,
          on_step: Callable[[int, float, float, float], None] | None = None, on_pairs: Callable[[str], None] | None = None) -> dict:
    """Train one stage into ``run_dir/<stage>/``; returns the final validation metrics.

    ``parent`` defaults to ``run_dir/<parent stage>/best.pt`` for the hybrid and finetune
    stages. ``on_step(step, loss, samples_per_s, done)`` reports progress about twice a second
    (reading the loss waits for the GPU), ``done`` being the share of the stage's steps or time
    budget, whichever is further. ``on_pairs``: told, once, which pairs `TrainConfig.pairs_dir`
    gave (and which it left out)."""
    run_dir = Path(run_dir)
    stage_dir = run_dir / config.stage
    stage_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = stage_dir / "last.pt", stage_dir / "best.pt"
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    state = load_checkpoint(last_path) if resume and last_path.exists() else None
    if state is not None and state["stage"] != config.stage:
        raise ValueError(f"{last_path}: holds stage {state['stage']}, not {config.stage}")
    if state is not None and best_path.exists() and _finished(state, config):
        # nothing left to train: skip rendering the pools (a minute on a GPU box), so that a
        # run split over sessions passes its finished stages at once
        return load_checkpoint(best_path)["val_metrics"]
    model = LensNet(ModelConfig(**config.model))
    parent_info = None
    if PARENT_STAGE[config.stage] is not None and state is not None:
        # resuming: last.pt holds the model and its parent's record, so the parent file need
        # not be here (a run carried to a lent GPU takes only the stage it trains)
        model = model_from_checkpoint(state).train()
        config.model = model.config.to_dict()
        parent_info = state["parent"]
    elif PARENT_STAGE[config.stage] is not None:
        parent = Path(parent) if parent else run_dir / PARENT_STAGE[config.stage] / "best.pt"
        if not parent.is_file():
            raise ValueError(f"stage {config.stage} starts from a {PARENT_STAGE[config.stage]} checkpoint and {parent} does not exist: "
                             f"train that stage first (lens train --stage {PARENT_STAGE[config.stage]} --run {run_dir}) or name one with --parent")
        pckpt = load_checkpoint(parent)
        if pckpt["stage"] != PARENT_STAGE[config.stage]:
            raise ValueError(f"{parent}: stage {config.stage} starts from a {PARENT_STAGE[config.stage]} checkpoint, not {pckpt['stage']}")
        model = model_from_checkpoint(pckpt).train()
        config.model = model.config.to_dict()
        parent_info = {"path": str(parent), "sha256": sha256_file(parent), "stage": pckpt["stage"]}
    use_flow = config.stage != "param"
    device = torch.device(config.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model.to(device)
    optim = make_optimizer(model, config.lr, config.weight_decay, captured=config.cuda_graphs)
    clock = {"start": time.perf_counter(), "offset": 0.0}

    def progress(i: int) -> float:
        done = i / config.steps
        if config.time_budget_s:
            done = max(done, (clock["offset"] + time.perf_counter() - clock["start"]) / config.time_budget_s)
        return min(1.0, done)

    def lr_factor(i: int) -> float:  # linear warm-up over the first 3%, then cosine decay to 2%
        p = progress(i)
        return float(min(1.0, max(p, (i + 1) / config.steps) / 0.03) * (0.02 + 0.98 * 0.5 * (1 + np.cos(np.pi * p))))

    sched = _LrSchedule(optim, config.lr, lr_factor)

    src_w = config.source_width or 2 * model.config.input_width
    # a --pairs folder with nothing to train on is said before the scenes are rendered
    pairs = load_pair_pool(config.pairs_dir, src_w, config.max_fit_residual) if config.pairs_dir else None
    pool = build_pool(config.pool_size, config.seed, TRAIN_PHOTOS, workers=config.workers, width=src_w)
    val_rng = np.random.default_rng(config.seed + 1)
    val_pool = build_pool(max(16, config.val_size // 2), config.seed, VAL_PHOTOS, validation=True, workers=config.workers, width=src_w)
    val_batches = [draw_batch(val_pool, min(32, config.val_size), val_rng, 0.5, device=device) for _ in range(max(1, config.val_size // 32))]
    data_fp = fingerprint(pool)
    val_pair_batches = []
    if pairs is not None:
        data_fp += f"+pairs:{pairs.fingerprint}"
        try:
            held_out = load_pair_pool(config.pairs_dir, src_w, config.max_fit_residual, split="val", limit=config.val_pairs)
        except ValueError:
            held_out = None
        note = pairs.summary(config.pairs_dir)
        if held_out is None:
            note += "; its held-out shoots have no labelled pair: best.pt is picked on synthetic pairs"
        else:
            val_pair_batches = pair_batches(held_out, 32, device)
            data_fp += f"+val-pairs:{held_out.fingerprint}"
            note += f"; best.pt is picked on {held_out.used} labelled pairs of its held-out shoots"
        if on_pairs:
            on_pairs(note)
    # what picks best.pt: the held-out real pairs' mean endpoint error where there are any
    best_key = "pairs_epe_mean" if val_pair_batches else "epe_mean"
    if device.type == "cuda":
        pool = pool_on_device(pool, device)
    clock["start"] = time.perf_counter()  # the budget is training time, not pool rendering

    step, best = 0, float("inf")
    if state is not None:
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        step, best = state["step"], state["best_epe"]
        if state.get("best_by", "epe_mean") != best_key:  # saved when another set picked best.pt: not comparable
            best = float("inf")
        clock["offset"] = state.get("elapsed_s", 0.0)
    if step == 0:  # a fresh start: the curve starts over too
        (stage_dir / HISTORY_FILE).unlink(missing_ok=True)

    def payload(kind: str, metrics: dict | None) -> dict:
        out = {
            "format": "lens-checkpoint/1", "kind": kind, "stage": config.stage, "step": step,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "model_config": dict(config.model), "train_config": asdict(config),
            "parent": parent_info, "seed": config.seed, "data_fingerprint": data_fp, "git_commit": git_commit(),
            "val_metrics": metrics or {}, "best_epe": best, "best_by": best_key,
        }
        if kind == "last":
            out.update(optimizer=optim.state_dict(), scheduler=sched.state_dict(), rng=_rng_state(rng), torch_rng=torch.get_rng_state(),
                       elapsed_s=clock["offset"] + time.perf_counter() - clock["start"])
        return out

    def step_loss(batch: Batch) -> torch.Tensor:
        _, flow, pred, true, h, w = _forward(model, batch, use_flow)
        loss = endpoint_error(pred, true, h, w).mean()
        if use_flow:
            loss = loss + config.smoothness_weight * smoothness(flow) + config.foldover_weight * foldover_penalty(pred, h, w)
        return loss

    def validate() -> dict[str, float]:
        """The synthetic held-out pairs' errors, and the real held-out pairs' as ``pairs_*``."""
        out = evaluate_batches(model, val_batches, use_flow)
        if val_pair_batches:
            out.update({f"pairs_{k}": v for k, v in evaluate_batches(model, val_pair_batches, use_flow).items()})
        return out

    captured = CapturedTrainStep(model, optim, pool, step_loss) if config.cuda_graphs else None
    metrics: dict = {}
    t0, seen, reported = time.perf_counter(), 0, 0.0
    with _StopRequests() as stop:
        while step < config.steps and progress(step) < 1.0:
            model.train()
            if captured is not None:
                loss = captured(plan_batch(pool.shape[0], tuple(pool.shape[-2:]), config.batch, rng, config.workload_share))
            else:
                if pairs is not None and rng.random() < config.pairs_share:
                    batch = draw_pair_batch(pairs, config.batch, rng, device)
                else:
                    batch = draw_batch(pool, config.batch, rng, config.workload_share, device=device)
                loss = step_loss(batch)
                optim.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                optim.step()
            sched.step()
            step += 1
            seen += config.batch
            finished = step == config.steps or progress(step) >= 1.0
            if on_step and (finished or time.perf_counter() - reported >= 0.5):
                reported = time.perf_counter()
                on_step(step, loss.item(), seen / (reported - t0), progress(step))
            if step % config.val_every == 0 or finished:
                metrics = validate()
                with open(stage_dir / HISTORY_FILE, "a") as fh:  # the error-versus-time curve
                    fh.write(json.dumps({"step": step, "pairs": step * config.batch, "elapsed_s": round(clock["offset"] + time.perf_counter() - clock["start"], 1),
                                         "train_loss": round(loss.item(), 4), **{k: round(v, 4) for k, v in metrics.items()}}) + "\n")
                if metrics[best_key] < best:
                    best = metrics[best_key]
                    save_checkpoint(best_path, payload("best", metrics))
            if step % config.checkpoint_every == 0 or finished:
                save_checkpoint(last_path, payload("last", metrics))
            if stop.signum is not None and not finished:
                if step % config.checkpoint_every:  # else just saved
                    save_checkpoint(last_path, payload("last", metrics))
                raise TrainingStopped(config.stage, step, last_path, stop.signum)
    if not best_path.exists():  # resumed a finished run
        metrics = validate()
        save_checkpoint(best_path, payload("best", metrics))
    return load_checkpoint(best_path)["val_metrics"]
