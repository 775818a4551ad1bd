"""A folder's state for before/after comparisons in the data-safety tests."""

from __future__ import annotations

import hashlib
from pathlib import Path


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder``: kind, and for files size, content hash and modification time.
    A folder's own time is left out: taking and dropping the output's lock file touches it."""
    entries = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        if path.is_file() and not path.is_symlink():
            entries[str(path.relative_to(folder))] = (
                info.st_mode,
                info.st_size,
                hashlib.sha256(path.read_bytes()).hexdigest(),
                info.st_mtime_ns,
            )
        else:
            entries[str(path.relative_to(folder))] = (info.st_mode,)
    return entries
