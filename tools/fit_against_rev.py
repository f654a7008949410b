"""The line fit of this tree against the one of a git revision: whether every fit comes out the
same, and how their times compare, interleaved photo by photo.

    python tools/fit_against_rev.py REV [ROUNDS] [photos|scenes|both]

A speed-up of the fit should change no fit, and its gain (a few percent) is far below this
machine's drift between whole runs (20-40%). So both versions run in one process on the same
work images and network lenses, alternating which goes first from one photo to the next: the
per-round ratio then holds to ~0.5%. REV's ``lens/runtime/plumb_line`` and ``lens_maps.py``
are copied from git into a temporary package of their own. Photos: the CPU bench's 48
textured photos (`tools/bench_cpu.py`) and/or 32 real-estate-like scenes (training extra), at
2048 x 1367, the network's lens from the default model as in `lens run`. Reported: fits that
differ (parameters bit for bit, outcome code, reason, line count, residuals), each round's
time per photo and the median ratio of this tree's time to REV's.
"""
from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
OLD = "lens_fit_at_rev"  # the temporary package's name


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def import_at_rev(rev: str, folder: Path):
    """REV's ``lens.runtime.plumb_line`` as ``lens_fit_at_rev.plumb_line``, importing REV's
    ``lens_maps`` (the rest of ``lens`` is this tree's)."""
    package = folder / OLD
    (package / "plumb_line").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    files = [f for f in _git("ls-tree", "--name-only", rev, "lens/runtime/plumb_line/").split() if f.endswith(".py")]
    for name in files + ["lens/runtime/lens_maps.py"]:
        text = _git("show", f"{rev}:{name}")
        text = text.replace("lens.runtime.plumb_line", f"{OLD}.plumb_line").replace("lens.runtime.lens_maps", f"{OLD}.lens_maps")
        (package / Path(name).relative_to("lens/runtime")).write_text(text)
    sys.path.insert(0, str(folder))
    return importlib.import_module(f"{OLD}.plumb_line")


def work_items(content: str, folder: Path) -> list[tuple[str, object, np.ndarray]]:
    """(name, work image, network lens) per photo, as `lens run` hands them to the fit."""
    import bench_cpu

    from lens.runtime.backends import DEFAULT_BUILD, OnnxRuntimeBackend
    from lens.runtime.io import read_image
    from lens.runtime.plumb_line import work_image

    backend = OnnxRuntimeBackend(DEFAULT_BUILD, "cpu")
    sets = {"photos": lambda f: bench_cpu.make_inputs(f, 48), "scenes": lambda f: bench_cpu.make_scene_inputs(f, 32)}
    items = []
    for name, make in sets.items():
        if content not in (name, "both"):
            continue
        make(folder / name)
        for path in sorted((folder / name).glob("*.jpg")):
            pixels = read_image(path).pixels
            prior = backend.infer_network(pixels[None])["params"][0]
            items.append((f"{name}/{path.name}", work_image(cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)), prior))
    return items


def same_fit(a, b) -> bool:
    return (np.array_equal(a.params, b.params) and a.code == b.code and a.reason == b.reason and a.lines == b.lines
            and np.array_equal([a.rms_px, a.rms_prior_px], [b.rms_px, b.rms_prior_px], equal_nan=True))


def main(rev: str, rounds: int = 3, content: str = "both") -> None:
    cv2.setNumThreads(1)  # as in `lens run` with a worker per core
    from lens.runtime.plumb_line import refine_with_lines as fit_here

    with tempfile.TemporaryDirectory() as tmp:
        old = import_at_rev(rev, Path(tmp) / "code")
        items = work_items(content, Path(tmp))
    old_work = [old.WorkImage(**dataclasses.asdict(w)) for _, w, _ in items]  # REV's own class
    differing = 0
    for (name, work, prior), work_old in zip(items, old_work):
        here, there = fit_here(work, prior), old.refine_with_lines(work_old, prior)
        if not same_fit(here, there):
            differing += 1
            print(f"differs: {name}: {there.code} -> {here.code}, parameters apart by {np.abs(here.params - there.params).max():.3g}")
    print(f"{len(items)} photos ({content}), {differing} fits differ from {rev}'s")
    times: dict[str, list[float]] = {"here": [], rev: []}
    for r in range(rounds):
        spent = {"here": 0.0, rev: 0.0}
        for k, ((_, work, prior), work_old) in enumerate(zip(items, old_work)):
            for which in (("here", rev) if (k + r) % 2 == 0 else (rev, "here")):
                t = time.perf_counter()
                fit_here(work, prior) if which == "here" else old.refine_with_lines(work_old, prior)
                spent[which] += time.perf_counter() - t
        for which, s in spent.items():
            times[which].append(s / len(items) * 1e3)
    ratios = [h / o for h, o in zip(times["here"], times[rev])]
    print(f"ms per fit, {rev}: {', '.join(f'{t:.1f}' for t in times[rev])}; this tree: {', '.join(f'{t:.1f}' for t in times['here'])}")
    print(f"this tree / {rev}: {float(np.median(ratios)):.3f} median of rounds ({', '.join(f'{x:.3f}' for x in ratios)})")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    if subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{sys.argv[1]}^{{commit}}"], cwd=ROOT, capture_output=True).returncode:
        sys.exit(f"{sys.argv[1]!r} is not a commit of this repository")
    content = sys.argv[3] if len(sys.argv) > 3 else "both"
    if content not in ("photos", "scenes", "both"):
        sys.exit(f"photos, scenes or both, not {content!r}")
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3, content)
