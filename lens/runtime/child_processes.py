"""Worker processes that do not outlive the process that started them."""
from __future__ import annotations

import os
import threading
import time


def exit_with_parent(parent: int, poll_s: float = 0.5) -> None:
    """A ``ProcessPoolExecutor`` initializer: exit once ``parent`` is gone. A parent killed by
    SIGTERM or SIGKILL (a stopped pod, a timeout) cannot shut its pool down, and its workers
    waited for work forever, one set more per killed run."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
