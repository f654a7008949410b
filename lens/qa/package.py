"""Byte-reproducible submission zips.

Entries are the predictions' ``<id>.jpg`` files, sorted, stored (JPEG is already compressed,
and re-compressing would only cost time), with fixed timestamps (1980-01-01), permissions
(0644), creator system and no extra fields: the same files give the same zip on any machine.
The zip is written to a temporary name, re-read and verified (names, CRCs, sha256 of every
entry), then renamed; a manifest beside it records sha256 per file, the run's model and engine
hashes, and the QA summary.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from lens.qa.gates import QAReport
from lens.qa.ids import ENTRY_RE
from lens.runtime.io import write_atomic
from lens.runtime.metadata import MetadataUnreadable, read_run_metadata

FIXED_TIME = (1980, 1, 1, 0, 0, 0)


class PackageError(Exception):
    pass


@dataclass
class PackageResult:
    zip_path: Path
    manifest_path: Path
    entries: int
    sha256: str


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def validate_entry_name(name: str) -> None:
    if "/" in name or "\\" in name or ".." in name or not ENTRY_RE.match(name):
        raise PackageError(f"refusing entry name {name!r}: entries are flat <id>.jpg names")


def _zip_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
    info.compress_type = zipfile.ZIP_STORED
    info.create_system = 3  # unix, so the permission bits below mean the same everywhere
    info.external_attr = (0o100644 & 0xFFFF) << 16
    return info


def build_zip(files: list[Path], zip_path: Path) -> dict[str, str]:
    """Write the zip atomically and verify it; returns sha256 per entry."""
    names = sorted(p.name for p in files)
    if len(set(names)) != len(names):
        raise PackageError("duplicate entry names")
    by_name = {p.name: p for p in files}
    hashes = {}
    tmp = zip_path.with_name(f".{zip_path.name}.part")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name in names:
                validate_entry_name(name)
                data = by_name[name].read_bytes()
                hashes[name] = _sha256(data)
                zf.writestr(_zip_info(name), data)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        verify_zip(tmp, hashes)
        os.replace(tmp, zip_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return hashes


def verify_zip(path: Path, hashes: dict[str, str]) -> None:
    """Re-read ``path``: exactly the expected entries, intact, with the expected bytes."""
    with zipfile.ZipFile(path) as zf:
        bad = zf.testzip()
        if bad is not None:
            raise PackageError(f"{path}: entry {bad} fails its CRC check")
        names = zf.namelist()
        if names != sorted(hashes):
            raise PackageError(f"{path}: entries differ from the files packaged")
        for name in names:
            if _sha256(zf.read(name)) != hashes[name]:
                raise PackageError(f"{path}: entry {name} does not match its source file")


def package(pred_dir: str | Path, zip_path: str | Path, qa: QAReport, force: bool = False) -> PackageResult:
    """Zip the predictions QA checked; refuse (nothing written) when QA failed unless ``force``."""
    pred_dir, zip_path = Path(pred_dir), Path(zip_path)
    if not qa.passed and not force:
        raise PackageError("QA failed; nothing was packaged (use --force to package anyway, which is recorded)")
    files = sorted(p for p in pred_dir.iterdir() if p.is_file() and ENTRY_RE.match(p.name))
    if not files:
        raise PackageError(f"{pred_dir}: no <id>.jpg files to package")
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    hashes = build_zip(files, zip_path)
    try:
        _, summary = read_run_metadata(pred_dir)
    except MetadataUnreadable:  # QA failed on it: packaged only with --force, which the manifest records
        summary = None
    manifest = {
        "format": "lens-submission-manifest/1",
        "zip": zip_path.name,
        "zip_sha256": _sha256(zip_path.read_bytes()),
        "entries": len(hashes),
        "files": hashes,
        "forced": bool(force and not qa.passed),
        "qa": {"passed": qa.passed, "failures": qa.failures(), "gates": {g.name: g.passed for g in qa.gates}},
        "run": {k: summary[k] for k in ("model", "engines", "versions") if k in summary} if summary else None,
    }
    manifest_path = zip_path.with_name(zip_path.name + ".manifest.json")
    write_atomic(manifest_path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return PackageResult(zip_path, manifest_path, len(hashes), manifest["zip_sha256"])
