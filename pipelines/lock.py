"""One writer per output folder.

Two commands pointed at the same folder would interleave their files. Each command that writes a
folder holds an OS file lock on ``<folder>/.erase.lock`` while it runs; a second one is refused
at once with a message saying so. The lock is the kernel's (``flock`` on POSIX, via filelock),
so a process that is killed — even by SIGKILL — releases it: there are no stale locks to clear.

Under several processes (``accelerate launch``) only the main process takes the lock; the
others write only what the main process coordinates.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from prompts.errors import InputError

LOCK_NAME = ".erase.lock"


def holds_nothing(folder: Path) -> bool:
    """True when ``folder`` is missing or holds nothing but our lock file."""
    return not folder.is_dir() or all(item.name == LOCK_NAME for item in folder.iterdir())


def clear_folder(folder: Path) -> None:
    """Empty ``folder`` for --overwrite, keeping the lock file this process holds."""
    for item in folder.iterdir():
        if item.name == LOCK_NAME:
            continue
        shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()


@contextlib.contextmanager
def output_lock(folder: str | Path, *, option: str = "--output", enabled: bool = True) -> Iterator[None]:
    """Hold ``folder``'s lock for the block, creating the folder if needed.

    If the block fails and the folder was created here and holds nothing else, it is removed
    again (with any parents made for it), so a refused command leaves no trace.
    """
    folder = Path(folder)
    if not enabled:
        yield
        return
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{option} {folder} is a file; give a folder")
    created = [p for p in [folder, *folder.parents] if not p.exists()]  # innermost first
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / LOCK_NAME)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        raise InputError(
            f"{option} {folder} is in use by another erase command (it holds {LOCK_NAME}); "
            "wait for that one to finish, or choose another folder"
        ) from None
    failed = True
    try:
        yield
        failed = False
    finally:
        lock.release()
        if failed and created and holds_nothing(folder):
            (folder / LOCK_NAME).unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # stops at the first folder that is not empty
                for made in created:
                    made.rmdir()
