"""No process of the server outlives the process it serves.

Thespian's admin daemonises (``setsid`` and a double fork), so the actor processes are not
run.py's descendants, and the kernel hands an orphan to init instead of ending it: a killed
gateway left its pool and workers running, a killed pool its workers. Three links close that:

- every actor process of ours dies with its parent (``die_with_parent``, ``PR_SET_PDEATHSIG``):
  the admin's death takes the gateway, the gateway's the pool, the pool's the workers;
- run.py watches the gateway and the admin (``exit_fd``) and ends the whole actor system when one
  dies. The admin's ``setsid`` made that system one process group (``end_group``), which also
  reaches Thespian's own logger process, where no code of ours runs;
- the gateway watches run.py and ends that group when run.py is killed.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import time

from loguru import logger

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent exits (call first in a forked actor)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # it died before the prctl
        os._exit(1)


def exit_fd(pid: int) -> int:
    """A file descriptor that becomes readable when process ``pid`` (any process) has exited."""
    return os.pidfd_open(pid)


def end_group(group: int, grace_s: float) -> bool:
    """Wait up to ``grace_s`` for every process of ``group`` to exit, then SIGKILL the rest;
    True when some had to be killed."""
    deadline = time.monotonic() + grace_s
    while _group_alive(group):
        try:  # the group's leader is the admin's first fork, run.py's child, exited at once: reap it
            os.waitpid(group, os.WNOHANG)
        except ChildProcessError:
            pass
        if time.monotonic() >= deadline:
            logger.warning("processes of the actor system (group {}) still running: killing them", group)
            os.killpg(group, signal.SIGKILL)
            return True
        time.sleep(0.05)
    return False


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True
