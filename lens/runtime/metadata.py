"""Where `lens run` records what it did, beside the images it wrote.

``OUT/lens-run/images.jsonl``: one JSON object per input image, sorted by id:
``{"id", "source", "source_stat" ([bytes, mtime_ns]), "output", "output_bytes", "status": "ok" | "failed", "error", "mode", "reasons",
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


class MetadataUnreadable(ValueError):
    """A run's records or summary exist but are not what `lens run` writes (a disk fault, an
    edit); ``file`` names it below the output folder, ``reason`` says where and why."""

    def __init__(self, file: str, reason: str):
        super().__init__(f"{file}: {reason}")
        self.file, self.reason = file, reason


def read_run_metadata(out_dir: str | Path) -> tuple[dict[str, dict] | None, dict | None]:
    """(records by id, summary) of a `lens run` output folder; (None, None) where absent.
    Raises `MetadataUnreadable` where a file is there but damaged: both are written whole
    (renamed into place), so unlike a killed run's ``.part`` file they are read strictly."""
    run = Path(out_dir) / RUN_DIR
    images, summary = None, None
    if (run / IMAGES_FILE).exists():
        images = {}
        for number, line in enumerate((run / IMAGES_FILE).read_bytes().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
                raise MetadataUnreadable(f"{RUN_DIR}/{IMAGES_FILE}", f"line {number} is not JSON ({exc})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("id"), str):
                raise MetadataUnreadable(f"{RUN_DIR}/{IMAGES_FILE}", f"line {number} is not an image's record")
            images[rec["id"]] = rec
    if (run / SUMMARY_FILE).exists():
        try:
            summary = json.loads((run / SUMMARY_FILE).read_bytes())
        except ValueError as exc:
            raise MetadataUnreadable(f"{RUN_DIR}/{SUMMARY_FILE}", f"not JSON ({exc})") from None
        if not isinstance(summary, dict):
            raise MetadataUnreadable(f"{RUN_DIR}/{SUMMARY_FILE}", "not a run summary")
    return images, summary
