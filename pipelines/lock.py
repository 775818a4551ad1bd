"""One writer per output folder.

Two commands pointed at the same folder would interleave their files. Each command that writes a
folder holds an OS lock (``flock``) on ``<folder>/.erase.lock`` while it runs; a second one is
refused at once with a message saying so. The kernel releases the lock of a process that dies,
even by SIGKILL, so there are no stale locks to clear.

The lock file is deleted when the command ends, while the lock is still held, so a finished or
refused command leaves nothing of it behind (a lock file it found there, it leaves). A process
that opened the file just before it was deleted would hold a lock on a name that no longer
exists; it notices (the path now names another file, or none) and takes the lock again on the
new file.

Under several processes (``accelerate launch``) only the main process takes the lock; the
others write only what the main process coordinates.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from prompts.errors import InputError

LOCK_NAME = ".erase.lock"
MARKER_NAME = ".concept-erase.json"  # the ownership marker (pipelines/ownership.py)

try:
    import fcntl
except ImportError:  # Windows: filelock's msvcrt lock, without the unlink-on-release
    fcntl = None


class _FolderLock:
    """An exclusive, non-blocking lock on one file, removed again on release."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None
        self._created = False
        self._fallback = None

    def acquire(self) -> bool:
        if fcntl is None:
            from filelock import FileLock, Timeout

            self._fallback = FileLock(self.path)
            try:
                self._fallback.acquire(blocking=False)
            except Timeout:
                return False
            return True
        for _ in range(100):  # each retry means another holder released in between: rare
            try:
                fd, self._created = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
            except FileExistsError:  # another holder's, or one an earlier version left behind
                fd, self._created = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644), False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            try:
                current = os.stat(self.path).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(fd).st_ino:
                self._fd = fd
                return True
            os.close(fd)  # locked a file its holder had just removed: take the new one
        return False

    def release(self) -> None:
        if self._fallback is not None:
            self._fallback.release()
            return
        if self._fd is not None:
            if self._created:  # only a lock file this process made
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
            os.close(self._fd)
            self._fd = None


def holds_nothing(folder: Path) -> bool:
    """True when ``folder`` is missing or holds nothing but our lock file and ownership marker."""
    return not folder.is_dir() or all(item.name in (LOCK_NAME, MARKER_NAME) for item in folder.iterdir())


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
    lock = _FolderLock(folder / LOCK_NAME)
    try:
        acquired = lock.acquire()
    except BaseException:
        _remove_created(folder, created)
        raise
    if not acquired:
        _remove_created(folder, created)
        raise InputError(
            f"{option} {folder} is in use by another erase command (it holds {LOCK_NAME}); "
            "wait for that one to finish, or choose another folder"
        )
    failed = True
    try:
        yield
        failed = False
    finally:
        lock.release()
        if failed:
            _remove_created(folder, created)


def _remove_created(folder: Path, created: list[Path]) -> None:
    """Undo the folders made for a command that then failed, if it left nothing in them."""
    if not created or not holds_nothing(folder):
        return
    (folder / MARKER_NAME).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # stops at the first folder that is not empty
        for made in created:
            made.rmdir()
