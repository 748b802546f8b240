"""File locks for node-local disk (filelock's flock): cache entries and the pilots' report journals.

The kernel frees a flock when its holder dies, so a killed pilot never leaves a lock behind; lock files
are never deleted while they may be held. filelock is imported on first use, not when the pilot starts:
it brings in asyncio, which a pilot that never needs a lock should not pay for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def file_lock(path: Path) -> Any:
    """An exclusive flock on ``path`` (not yet taken)."""
    import filelock

    return filelock.FileLock(str(path))


def try_acquire(lock: Any, timeout: float) -> bool:
    """True once ``lock`` is ours; False after ``timeout`` seconds (0: a single try)."""
    import filelock

    try:
        lock.acquire(timeout=timeout)
    except filelock.Timeout:
        return False
    return True


def is_locked(path: Path) -> bool:
    """Whether another process holds the flock on ``path`` right now."""
    lock = file_lock(path)
    try:
        if not try_acquire(lock, 0):
            return True
    except OSError:
        return False
    lock.release()
    return False
