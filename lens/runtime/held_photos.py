"""How many decoded photos a run holds at once, against a share of the memory it may use.

`lens run` decodes photos ahead of inference (up to ``2 x workers x batch`` of them) so that
batches never wait for the decoder, holds up to ``workers + 1`` batches being corrected and
up to `HELD_BATCHES` batches' worth waiting for same-size companions. On a GPU server with
``--batch 16`` and 16 workers that is up to ~800 decoded photos: ~7 GB of 2048 x 1367 ones,
but ~29 GB of 12 MP ones (36 MB each) and ~58 GB of 24 MP ones (72 MB), past which the kernel
kills the run. So the photos held are counted (`HeldPhotos`) and, while their count times the
largest photo decoded so far exceeds `HELD_SHARE` of the memory available when the run
started (`available_memory`: the machine's and its container's), the run stops reading
ahead and waits for the batches in flight. Where the memory suffices nothing changes: on this
24 GB machine the cap is ~1,400 photos of 2048 x 1367, and a CPU run holds ~3 per worker.
"""
from __future__ import annotations

from pathlib import Path

from lens.runtime.cpu_budget import CGROUP_ROOT, SELF_CGROUP, cgroup_folders, read_small_file

HELD_SHARE = 0.5  # of the available memory: the rest is for the models, maps and encoders
MEMINFO = Path("/proc/meminfo")
_UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a number near 2^63


def _number(path: Path) -> int | None:
    text = read_small_file(path)
    return int(text) if text and text.isdigit() else None  # v2's "max": no limit


def _stat(path: Path, key: str) -> int:
    """A ``memory.stat`` field, or 0."""
    for line in (read_small_file(path) or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


def _cgroup_room(folder: Path) -> int | None:
    """Bytes a cgroup folder's memory limit still allows (v2 ``memory.max`` / v1
    ``memory.limit_in_bytes``), its reclaimable file cache counted as free, as the kernel
    would reclaim it before killing; None without a limit."""
    for limit_file, usage_file, inactive in (("memory.max", "memory.current", "inactive_file"),
                                             ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")):
        limit = _number(folder / limit_file)
        if limit is not None and limit < _UNLIMITED:
            usage = _number(folder / usage_file) or 0
            return limit - max(0, usage - _stat(folder / "memory.stat", inactive))
    return None


def available_memory(meminfo: Path = MEMINFO, cgroup_root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> int | None:
    """Bytes this process may still fill: the machine's ``MemAvailable``, or less where a
    cgroup (a container's memory limit) allows less; None where neither is known (not Linux)."""
    available = None
    for line in (read_small_file(meminfo) or "").splitlines():
        fields = line.split()
        if fields[:1] == ["MemAvailable:"] and len(fields) > 1 and fields[1].isdigit():
            available = int(fields[1]) * 1024
    for folder in cgroup_folders(cgroup_root, self_cgroup, "memory"):
        room = _cgroup_room(folder)
        if room is not None:
            available = room if available is None else min(available, room)
    return None if available is None else max(0, available)


def held_photos_budget() -> int | None:
    """Bytes of decoded photos a run may hold: `HELD_SHARE` of `available_memory`."""
    available = available_memory()
    return None if available is None else int(available * HELD_SHARE)


class HeldPhotos:
    """The photos a run holds (being decoded or decoded, waiting for their batch, being
    corrected), counted by the thread that hands them out and collects their records."""

    def __init__(self, budget: int | None):
        self.budget = budget  # bytes; None: no cap
        self.count = 0
        self.peak = 0
        self.largest = 0  # bytes of the largest photo decoded so far
        self.capped = False  # whether the cap held the run back at some point

    def add(self) -> None:
        self.count += 1
        self.peak = max(self.peak, self.count)

    def done(self, n: int = 1) -> None:
        self.count -= n

    def saw(self, size: int) -> None:
        self.largest = max(self.largest, size)

    def full(self, more: int = 0) -> bool:
        """Whether the photos held, and ``more`` of them, would exceed the budget (each as
        large as the largest so far). Until a photo has been decoded its size is unknown: no
        second one is read ahead."""
        if self.budget is None:
            return False
        if self.largest == 0:
            return self.count + more > 1
        full = (self.count + more) * self.largest > self.budget
        self.capped |= full
        return full

    def as_dict(self) -> dict:
        return {"peak": self.peak, "capped": self.capped, "budget_bytes": self.budget, "largest_photo_bytes": self.largest}
