"""The output folder's bookkeeping for `lens run` (`lens.runtime.pipeline`): one run at a
time (a lock), the settings an earlier run wrote with (so that ``--resume`` never mixes two),
the records of images already done, and what a killed run left behind."""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lens.runtime.io import write_atomic
from lens.runtime.metadata import IMAGES_FILE, LOCK_FILE, SETTINGS_FILE


class RunRefused(RuntimeError):
    """The run cannot start in this output folder (nothing was written)."""


class ResumeMismatch(RunRefused):
    """``--resume`` into a folder written with other output settings."""


class OutputBusy(RunRefused):
    """Another `lens run` is writing to the output folder."""


class RecordsUnwritable(RuntimeError):
    """The run's records could not be written (a full disk): the run stops. Every output
    already written is complete; an output without its record is corrected again by
    ``--resume``."""


class OutputDiskFull(RecordsUnwritable):
    """An output could not be written for want of space or quota: every later one would fail
    the same way after its decode, inference and warp, so the run stops as when its records
    cannot be written (the image is recorded as failed; ``--resume`` redoes it)."""


@contextmanager
def exclusive(run_dir: Path) -> Iterator[str | None]:
    """Hold ``run_dir``'s lock file for the run: a second run into the same folder (an
    overlapping cron job) would delete the first one's temporary files and interleave its
    records. The lock is the kernel's (``flock``), so a killed run releases it. Yields None, or
    why the folder could not be locked where its file system takes no locks (an NFS share
    without a lock daemon, some SMB mounts): the run goes on there, unguarded."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory lock here
        yield "no file locks on this system"
        return
    try:
        handle = open(run_dir / LOCK_FILE, "a+")
    except OSError as exc:
        raise RunRefused(f"cannot write to the output folder {run_dir.parent}: {exc.strerror or exc}") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            unlocked = None
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            raise OutputBusy(f"another lens run{f' (process {holder})' if holder else ''} is writing to {run_dir.parent}: "
                             "wait for it to finish, or choose another output folder") from None
        except OSError as exc:  # ENOLCK, EOPNOTSUPP: the file system has no locks, not another run
            unlocked = f"its file system takes no lock ({exc.strerror or exc})"
        try:  # unbuffered: a failed write must not fail again when the handle closes
            os.ftruncate(handle.fileno(), 0)
            os.pwrite(handle.fileno(), str(os.getpid()).encode(), 0)
        except OSError as exc:  # a full disk: nothing else could be written either
            raise RunRefused(f"cannot write to the output folder {run_dir.parent}: {exc.strerror or exc}") from None
        try:
            yield unlocked
        finally:
            if unlocked is None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def source_stat(path: Path) -> list[int] | None:
    """What ``--resume`` compares to tell a replaced input from the one already corrected."""
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def json_lines(path: Path, key: str) -> Iterator[dict]:
    """The records (JSON objects with a string ``key``) of a JSON Lines file appended to as
    work is done (none if it is missing); any other line is skipped: the last line of a killed
    run may be cut, and after a power cut the file's end may hold whatever the disk had there
    (zeros, bytes that are not UTF-8: `--resume` stopped on a UnicodeDecodeError)."""
    if not path.exists():
        return
    for line in path.read_bytes().splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # JSONDecodeError, UnicodeDecodeError
            continue
        if isinstance(record, dict) and isinstance(record.get(key), str):
            yield record


def read_records(run_dir: Path) -> dict[str, dict]:
    return {rec["id"]: rec for name in (IMAGES_FILE, IMAGES_FILE + ".part") for rec in json_lines(run_dir / name, "id")}


def clean_stale_temporaries(out: Path, recursive: bool = False) -> None:
    """Remove the hidden temporary files (`write_atomic`) a killed run left in ``out``."""
    for p in (out.rglob if recursive else out.glob)(".*.part"):
        p.unlink(missing_ok=True)


def hold_to_settings(run_dir: Path, settings: dict, resume: bool) -> None:
    """With ``resume``, refuse a folder whose earlier run had other settings (its outputs and
    this run's would mix); then record this run's."""
    path = run_dir / SETTINGS_FILE
    if resume and path.exists():
        try:
            earlier = json.loads(path.read_bytes())
        except ValueError:  # JSONDecodeError, UnicodeDecodeError
            earlier = None
        if not isinstance(earlier, dict):  # written atomically: an edit or a disk fault
            raise ResumeMismatch(f"--resume: {path} is damaged (not the JSON object lens writes), so the earlier run's settings "
                                 "are unknown and its outputs may not match this run's: run without --resume to redo every image")
        changed = sorted(k for k in set(settings) | set(earlier) if settings.get(k) != earlier.get(k))
        if changed:
            detail = "; ".join(f"{k}: {earlier.get(k)!r} then, {settings.get(k)!r} now" for k in changed)
            raise ResumeMismatch(f"--resume: {run_dir.parent} was written with other settings ({detail}); "
                                 "its outputs and this run's would differ. Resume with the earlier settings, or run without --resume to redo every image")
    try:
        write_atomic(path, (json.dumps(settings, indent=2, sort_keys=True) + "\n").encode())
    except OSError as exc:
        raise RunRefused(f"cannot write to the output folder {run_dir.parent}: {exc.strerror or exc}") from None
