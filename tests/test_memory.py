"""`lens.runtime.memory`: a run's per-photo buffers are reused, not zero-filled afresh."""
import os
import platform
import subprocess
import sys

import pytest

# A photo's worth of buffers (two 11 MB remap maps and an 8 MB image), allocated, touched and
# freed together on a worker thread 20 times, as `lens run` does per photo; page faults per photo.
_PHOTO_LOOP = """
import resource, sys
from concurrent.futures import ThreadPoolExecutor
import numpy as np
from lens.runtime.memory import keep_freed_memory
kept = keep_freed_memory()
assert kept == (sys.argv[1] == "keep"), kept
def photo():
    maps = [np.ones(11 * 2**18, np.float32) for _ in range(2)]
    image = np.ones(8 * 2**20, np.uint8)
    return sum(float(m[-1]) for m in maps) + float(image[-1])
pool = ThreadPoolExecutor(1)
def in_thread():
    pool.submit(photo).result()
for _ in range(3):
    in_thread()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    in_thread()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def _faults_per_photo(mode: str) -> float:
    """``keep``: as `lens run` sets the allocator; ``default``: with ``LENS_KEEP_FREED_MEMORY=0``."""
    env = {**os.environ, "LENS_KEEP_FREED_MEMORY": "1" if mode == "keep" else "0"}
    out = subprocess.run([sys.executable, "-c", _PHOTO_LOOP, mode], capture_output=True, text=True, check=True, env=env)
    return float(out.stdout.strip())


@pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"), reason="glibc's mallopt")
def test_photo_buffers_are_reused_without_page_faults_unless_opted_out():
    # glibc alone hands the freed 30 MB back to the kernel and faults ~1,500 pages per photo
    # (on this machine); kept, the next photo reuses them
    assert _faults_per_photo("keep") < 50
    # opted out, glibc's own behaviour: the loop does exercise the trimming it guards against
    assert _faults_per_photo("default") > 200
