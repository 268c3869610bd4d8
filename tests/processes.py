"""What tests ask of a process by its pid, read from /proc (Linux, where the suite runs)."""

from __future__ import annotations

from pathlib import Path


def running(pid: int) -> bool:
    """Running: not gone, and not a zombie waiting for a reaper (an init that reaps nothing keeps those).

    One read of /proc/PID/stat, no check before it: a process reaped between a check and the read is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
