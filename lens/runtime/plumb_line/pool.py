"""`LineFitPool`: line fits for `lens run`, inline or in worker processes."""
from __future__ import annotations

import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from lens.runtime.child_processes import exit_with_parent
from lens.runtime.cpu_budget import usable_cores
from lens.runtime.plumb_line.edges import WorkImage
from lens.runtime.plumb_line.refine import LineFit, refine_with_lines


def _fit_process_start(parent: int) -> None:
    """A fit process's initializer: it exits with its parent, and OpenCV runs in its one thread.
    The processes are the run's parallelism, one per worker; by default each process's blur,
    Sobel and Canny would also start a thread per core (256 threads for 16 workers on 16 cores).
    On this 2-core machine with 4 workers it made no measurable difference (1.00x, 0.95-1.03,
    3 alternated rounds of 144 photos); it has not been timed on a many-core machine."""
    import cv2

    exit_with_parent(parent)
    cv2.setNumThreads(1)


class LineFitPool:
    """`refine_with_lines` in worker processes, or inline in the calling thread. The fit is
    numpy on arrays of a few thousand points, so Python holds the GIL much of the time: two
    threads doing nothing but fits managed 3.5 fits/s against 4.6 for one on 2 cores, and
    processes scale with the cores. Started on first use (spawned: the parent holds ONNX
    Runtime / CUDA threads that must not be forked, so a script that calls
    `lens.runtime.pipeline.run` needs the usual ``if __name__ == "__main__":`` guard); one
    process runs the fit inline. A fit that raises keeps the network's lens."""

    #: Up to this many workers, `for_workers` fits inline in a short run: in `lens run` a
    #: worker's other stages (decode, ONNX Runtime, remap, encode) release the GIL, so two
    #: workers fitting in their own threads overlapped well and saved starting the processes
    #: (~0.4 s of a core each, spawned). With more workers, fits in threads would queue on the GIL.
    INLINE_WORKERS = 2
    #: From this many images a run with 2 workers fits in processes too: once started, they
    #: fit without the two threads' fits queuing on the GIL. `lens run` with 2
    #: workers on 2 cores, 2 processes against inline, alternated in one script (median of the
    #: per-round ratios): 0.94x at 48 photos (0.81-0.99, 4 rounds), where the processes' start
    #: outweighs it; 1.06x at 96 (0.99-1.13, 4), 1.06x at 192 (1.06-1.16, 3), 1.09x at 384
    #: (1.07-1.12, 2); CPU per photo the same from 96 on.
    PROCESSES_FROM_IMAGES = 96

    def __init__(self, processes: int):
        self.processes = max(1, processes)
        self._pool = None
        self._lock = threading.Lock()

    @classmethod
    def for_workers(cls, workers: int, cores: int | None = None, images: int | None = None) -> "LineFitPool":
        """Inline up to `INLINE_WORKERS` workers for a run of fewer than
        `PROCESSES_FROM_IMAGES` ``images`` (None: unknown, short), else a process per worker up
        to ``cores`` (default: `usable_cores`): a fit is CPU-bound, so processes beyond the
        cores only add their start and their memory. `lens run --workers 8` on 2 cores, 96
        photos, 4 alternated rounds: 1.13x as fast (1.10-1.25) with 2 processes as with 8."""
        if workers <= cls.INLINE_WORKERS and (images is None or images < cls.PROCESSES_FROM_IMAGES):
            return cls(1)
        return cls(min(max(workers, 1), cores or usable_cores()))

    def fit(self, photo: np.ndarray | WorkImage, prior: np.ndarray) -> LineFit:
        try:
            if self.processes > 1:
                try:
                    with self._lock:
                        if self._pool is None:
                            self._pool = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                                             initializer=_fit_process_start, initargs=(os.getpid(),))
                    return self._pool.submit(refine_with_lines, photo, prior).result()
                except BrokenProcessPool:
                    # workers could not start (e.g. a calling script without a __main__ guard,
                    # which spawned processes re-import): fit in this process from now on
                    self.processes = 1
            return refine_with_lines(photo, prior)
        except Exception as exc:  # a numerical corner case must not stop a run of thousands
            prior = np.asarray(prior, dtype=np.float64).reshape(8)
            return LineFit(prior, False, "fit_error", f"line fit failed: {type(exc).__name__}: {exc}", 0, float("nan"), float("nan"))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
