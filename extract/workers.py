"""The stage's worker processes: how many, how many threads each, and dying with the run.

A joblib worker must never publish an output once the stage process that started it is gone
(a killed run's worker could otherwise write into a folder that was deleted and claimed again
meanwhile). So each worker gets a parent-death signal (Linux `prctl`), watches its parent from
a thread, and checks it once more right before each publication (`check_parent`).
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1
ORPHANED = 70  # the exit status of a worker whose run is gone
_watched_parent: int | None = None
_threads_set: int | None = None


def default_jobs() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def limit_threads(threads: int) -> None:
    """Parallel workers each get a share of the cores, so N workers do not fight over them."""
    global _threads_set
    if _threads_set == threads:
        return
    import cv2

    cv2.setNumThreads(threads)
    torch = sys.modules.get("torch")  # only when a stage already uses it: importing torch costs seconds
    if torch is not None:
        torch.set_num_threads(threads)
    _threads_set = threads


def die_with_parent(parent: int, signal_from_kernel: bool) -> None:
    """Make this worker process end when the stage process `parent` does.

    Linux: `prctl(PR_SET_PDEATHSIG, SIGKILL)` (the kernel kills us when the thread that started
    us ends; asked only when that was the parent's main thread, which lives as long as the run).
    Everywhere: a daemon thread that checks the parent every 0.2 s, and a check before each
    publication (`check_parent`)."""
    global _watched_parent
    if _watched_parent == parent:
        check_parent(parent)
        return
    if signal_from_kernel and sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    _watched_parent = parent
    check_parent(parent)  # the parent may have died before prctl took effect

    def watch():
        while True:
            time.sleep(0.2)
            check_parent(parent)

    threading.Thread(target=watch, name="stage-parent-watch", daemon=True).start()


def check_parent(parent: int | None) -> None:
    """End this process at once if `parent` is no longer its parent (the run is gone)."""
    if parent is not None and os.getppid() != parent:
        os._exit(ORPHANED)  # orphaned: nothing of ours may be published any more


@contextlib.contextmanager
def ctrl_c_blocked():
    """Ctrl-C (SIGINT) blocked in this thread for the block; a process started meanwhile
    inherits the blocked signal across exec. A Ctrl-C that arrives meanwhile is not lost: it
    waits until the block ends (or goes to another thread of this process)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


_quiet = False


def quiet_joblib_workers() -> None:
    """Start joblib's worker processes with Ctrl-C blocked, from now on in this process.

    A terminal's Ctrl-C goes to the whole process group: a worker still importing, or between
    tasks, would print its own KeyboardInterrupt traceback. The stage process alone handles it
    (one line, exit 130) and shuts the workers down. joblib (loky) starts workers lazily, from
    whichever thread needs one, always through `fork_exec`: wrapped here so that the one call
    runs with the signal blocked in its thread."""
    global _quiet
    if _quiet:
        return
    from joblib.externals.loky.backend import fork_exec as module

    plain = module.fork_exec

    def fork_exec(*args, **kwargs):
        with ctrl_c_blocked():
            return plain(*args, **kwargs)

    module.fork_exec = fork_exec
    _quiet = True


def ignore_ctrl_c(*_args) -> None:
    """A worker's initialiser: leave Ctrl-C to the process that started it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
