"""How many CPU cores this process may use: the default for `lens run --workers`.

``os.cpu_count()`` counts the host's cores. In a container limited by a CPU quota (Kubernetes
``resources.limits.cpu``, ``docker --cpus``) or pinned to some cores (``--cpuset-cpus``,
``taskset``), one worker thread and one line-fit process per host core oversubscribe the cores
actually granted, and each holds a full-resolution image in memory. So the default is the
smallest of: the cores this process may run on (its affinity mask) and the CPU quota of its
cgroup and of every cgroup above it (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` /
``cpu.cfs_period_us``), rounded up.
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")


def read_small_file(path: Path) -> str | None:
    """A small text file's content, stripped (a cgroup or /proc setting), or None."""
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _quota_v2(folder: Path) -> float | None:
    """Cores granted by a cgroup v2 folder's ``cpu.max`` ("QUOTA PERIOD" or "max PERIOD")."""
    text = read_small_file(folder / "cpu.max")
    if not text:
        return None
    parts = text.split()
    try:
        return int(parts[0]) / int(parts[1]) if parts[0] != "max" and len(parts) == 2 else None
    except ValueError:
        return None


def _quota_v1(folder: Path) -> float | None:
    quota, period = read_small_file(folder / "cpu.cfs_quota_us"), read_small_file(folder / "cpu.cfs_period_us")
    try:
        return int(quota) / int(period) if quota and period and int(quota) > 0 and int(period) > 0 else None
    except ValueError:
        return None


# where cgroup v1 mounts a controller's hierarchy (v2 has one, at the root)
_V1_MOUNTS = {"cpu": ("cpu", "cpu,cpuacct"), "memory": ("memory",)}


def cgroup_folders(cgroup_root: Path, self_cgroup: Path, controller: str = "cpu") -> list[Path]:
    """This process's cgroup folders for ``controller`` ("cpu" or "memory") and their
    ancestors up to the root (a limit anywhere above applies too). A container usually sees
    its own cgroup as the root."""
    folders = [cgroup_root] + [cgroup_root / name for name in _V1_MOUNTS[controller]]
    for line in (read_small_file(self_cgroup) or "").splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        if fields[0] == "0":  # v2: one unified hierarchy
            base = cgroup_root
        elif controller in fields[1].split(","):  # v1: the controller's hierarchy (e.g. "cpu,cpuacct")
            base = cgroup_root / fields[1]
        else:
            continue
        path = Path(fields[2].lstrip("/"))
        while True:
            folders.append(base / path)
            if path == Path("."):
                break
            path = path.parent
    return list(dict.fromkeys(folders))  # the root may be listed twice


def usable_cores(cgroup_root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> int:
    """Cores this process may use (at least 1); see the module docstring."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    for folder in cgroup_folders(cgroup_root, self_cgroup):
        quota = _quota_v2(folder) or _quota_v1(folder)
        if quota:
            cores = min(cores, math.ceil(quota))
    return max(1, cores)


@contextmanager
def opencv_threads_per_worker(workers: int):
    """OpenCV's own thread pool shared out among ``workers`` threads that each call it, for the
    duration: by default every ``cv2.remap`` / ``cv2.resize`` of each worker fans out over all
    cores while the other workers want them too. With 2 workers on 2 cores, one OpenCV thread
    each made `lens run` 1.00-1.22x as fast (median 1.15x; 24 photos of 2048 x 1367, line fit
    on, 4 alternated rounds: 10.9-13.4 against 10.1-10.9 images/s, CPU per photo 142-170
    against 171-181 ms). Restores the previous setting."""
    import cv2

    before = cv2.getNumThreads()
    cv2.setNumThreads(max(1, usable_cores() // max(1, workers)))
    try:
        yield
    finally:
        cv2.setNumThreads(before)
