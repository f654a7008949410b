"""Keep freed image buffers in the process instead of handing them back to the kernel.

Every photo of a run allocates the same large arrays again (the decoded pixels, the two 11 MB
remap maps of a 2048 x 1367 photo, the warped image, the encoder's buffer) and frees them
together. glibc then finds tens of megabytes free at the top of its heap, more than its trim
threshold (twice its adaptive mmap threshold: ~22 MB once an 11 MB block has been freed), and
hands them back to the kernel, which zero-fills every page again when the next photo touches
it. With blocks under `MMAP_THRESHOLD` taken from the heap and the heap kept up to
`TRIM_THRESHOLD`, the next photo reuses the same pages. Measured on this 2-core machine, per
2048 x 1367 photo, alternating processes with and without it: decode, maps, remap and encode
in one thread, 4,461 page faults and 14-19 ms of system time -> none, user time unchanged
(54 ms); `lens run` with 2 workers (8 runs of 48 photos each way), 500-1,200 faults and 7-10 ms
-> under 100 and 2-7 ms; a plain OpenCV undistort loop had 0-45 and 2-4 ms. The throughput
gain in `lens run` is within this machine's run-to-run noise.

The cost is that a process keeps up to `TRIM_THRESHOLD` of freed memory mapped. A run's working
set is the same for every photo of one size, so it stays near its peak anyway: 2 workers on
2048 x 1367 photos peaked at 293 MB either way; on photos of six sizes from 1024 to 4000 px,
interleaved, at 636 MB against 537-582 MB, the same on every repeat. A service that runs
`lens.runtime.pipeline.run` among other work and would rather hand memory back sets
``LENS_KEEP_FREED_MEMORY=0``. Only glibc has ``mallopt``; elsewhere (musl, macOS, Windows) this
does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc's upper bound for M_MMAP_THRESHOLD on 64-bit (HEAP_MAX_SIZE / 2): a larger value is
# refused. A 4000 x 3000 photo's buffers (36 MB) are still mapped afresh.
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 512 * 1024 * 1024

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's allocator to reuse large freed blocks (once per process); True if it did
    (False elsewhere, or with ``LENS_KEEP_FREED_MEMORY=0``)."""
    global _done
    if _done is None:
        _done = False
        wanted = os.environ.get("LENS_KEEP_FREED_MEMORY", "1") != "0"
        if wanted and sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                # mallopt returns 1 on success, 0 if it refused the value
                _done = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
            except (OSError, AttributeError):  # no loadable C library with mallopt: glibc's defaults stay
                pass
    return _done
