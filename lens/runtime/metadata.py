"""Where `lens run` records what it did, beside the images it wrote.

``OUT/lens-run/images.jsonl``: one JSON object per input image, sorted by id:
``{"id", "source", "source_stat" ([bytes, mtime_ns]), "output", "status": "ok" | "failed", "error", "mode", "reasons",
"params", "safety", "hard_unsafe", "timings_ms"}``. ``OUT/lens-run/summary.json``: counts per
mode, failures, throughput, model and engine hashes, versions. `lens qa` and `lens package`
read both; the folder is not part of a submission. ``OUT/lens-run/settings.json``, written when
a run starts: what decides the outputs' bytes (`lens.runtime.pipeline.output_settings`), which
``--resume`` holds the next run to.
"""
from __future__ import annotations

import json
from pathlib import Path

RUN_DIR = "lens-run"
IMAGES_FILE = "images.jsonl"
SUMMARY_FILE = "summary.json"
SETTINGS_FILE = "settings.json"
LOCK_FILE = ".lock"  # held (flock) by the run writing to the folder


def read_run_metadata(out_dir: str | Path) -> tuple[dict[str, dict] | None, dict | None]:
    """(records by id, summary) of a `lens run` output folder; (None, None) where absent."""
    run = Path(out_dir) / RUN_DIR
    images, summary = None, None
    if (run / IMAGES_FILE).exists():
        images = {}
        for line in (run / IMAGES_FILE).read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                images[rec["id"]] = rec
    if (run / SUMMARY_FILE).exists():
        summary = json.loads((run / SUMMARY_FILE).read_text())
    return images, summary
