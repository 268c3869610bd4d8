"""Child processes the engine starts (DDP training workers, sweep trials): a clean environment and
no orphans."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

# set by torchrun/Lightning for a rank; inherited by a fresh launch they would make it join a dead group
RANK_VARIABLES = ("LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT", "MASTER_ADDR", "NODE_RANK", "RANK", "GROUP_RANK")
PR_SET_PDEATHSIG = 1


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in RANK_VARIABLES}


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that has Linux SIGKILL the child when its parent dies, even by kill -9, so a killed
    sweep or run leaves nothing training unseen. None elsewhere."""
    return _die_with_parent if sys.platform.startswith("linux") else None
