"""Which files erase may delete or replace: only the ones it wrote, and it knows which.

A folder is ours when it holds our marker, ``.concept-erase.json``: the kind of folder (a training
run, generated images, an eval report, an exported pipeline) and every top-level name erase
created in it. A name is recorded *before* it is first written, so a kill between the two leaves
a recorded name without a file, never a file of ours that the marker does not know.

- ``--overwrite`` deletes only recorded names, never the folder, so anything else a user put
  there stays. A subfolder moved in whole (a pipeline's ``unet/``) has its files recorded too:
  a file a user put inside it makes the command refuse, before anything is deleted, rather than
  go with the subfolder.
- The clean-up after a killed writer deletes only temporary names of recorded names
  (``.NAME.XXXXXXXX.tmp`` / ``.old``), at the top of the folder and of its recorded subfolders,
  never deeper.
- A folder without the marker that holds anything is someone else's: erase writes nothing into
  it and deletes nothing from it, ``--overwrite`` or not.

It is git's rule (never delete a file you do not track) applied to output folders. Reading the
marker (``inspect``) changes nothing, so commands check ownership with every other input before
their first write.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.files import atomic_folder, move_aside, write_json_atomic
from pipelines.lock import LOCK_NAME, MARKER_NAME
from prompts.errors import InputError

MARKER_FORMAT = "concept-erase-folder/1"
KINDS = {
    "run": "an `erase train` run",
    "images": "images from `erase generate`",
    "report": "an `erase eval` report",
    "pipeline": "a pipeline written by `erase export` or `erase apply`",
    "sweep": "an `erase sweep`",
    "attack": "an `erase attack` report",
}
# The temporary names our writers use beside a target (tempfile.mkstemp/mkdtemp in pipelines/files.py).
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]+\.(?:tmp|old)$")


def _check_name(name: str) -> str:
    if not name or name in (".", "..", LOCK_NAME, MARKER_NAME) or "/" in name or "\\" in name or "\x00" in name:
        raise ValueError(f"not a plain file name: {name!r}")
    return name


def _shown(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def read_marker(path: Path) -> dict:
    """The marker's record; a damaged marker is named with the fix (it is always written whole)."""
    marker = path / MARKER_NAME
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
        names = record["names"]
        if record.get("format") != MARKER_FORMAT or record.get("kind") not in KINDS or not isinstance(names, list):
            raise ValueError("unknown format")
        for name in names:
            _check_name(name)
        files = record.get("files", {})
        if not isinstance(files, dict) or not all(
            isinstance(inside, list) and all(isinstance(f, str) for f in inside) for inside in files.values()
        ):
            raise ValueError("unknown format")
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise InputError(
            f"{marker} is damaged, so which files in {path} erase wrote is unknown; move out what you want "
            "to keep and delete the folder, or choose another one"
        ) from None
    return record


@dataclass
class OwnedFolder:
    """An output folder and the names erase recorded in it."""

    path: Path
    kind: str
    names: list[str] = field(default_factory=list)
    marked: bool = False  # the marker is on disk
    files: dict[str, list[str]] = field(default_factory=dict)  # recorded subfolder → the files erase put in it

    @classmethod
    def inspect(cls, path: str | Path, kind: str, option: str = "--output") -> OwnedFolder:
        """Read-only. A missing or empty folder becomes ours when first written; a marked folder of
        the same kind is ours; anything else is refused, naming what is there."""
        path = Path(path)
        if not path.exists():
            return cls(path, kind)
        if not path.is_dir():
            raise InputError(f"{option} {path} is a file; give a folder")
        if not (path / MARKER_NAME).is_file():
            others = sorted(p.name for p in path.iterdir() if p.name != LOCK_NAME)
            if others:
                raise InputError(
                    f"{option} {path} holds files that erase did not write ({_shown(others)}); erase writes "
                    "only into new or empty folders or its own, and never deletes what it did not write: "
                    "choose another folder"
                )
            return cls(path, kind)
        record = read_marker(path)
        if record["kind"] != kind:
            raise InputError(f"{option} {path} holds {KINDS[record['kind']]}, not {KINDS[kind]}; choose another folder")
        return cls(path, kind, list(record["names"]), True, dict(record.get("files", {})))

    def owns(self, name: str) -> bool:
        return name in self.names

    def foreign(self, names: list[str]) -> list[str]:
        """Those of ``names`` that exist in the folder without being ours."""
        return [n for n in names if n not in self.names and ((self.path / n).exists() or (self.path / n).is_symlink())]

    def check_claimable(self, names: list[str], option: str = "--output") -> None:
        """Refuse, before anything is written, to write over a file that is not ours."""
        found = self.foreign([_check_name(n) for n in names])
        if found:
            raise InputError(
                f"{option} {self.path} already holds {_shown(found)}, which erase did not write and would "
                "replace; move it away or choose another folder"
            )
        self.refuse_strays(names, option)

    def strays(self, names: list[str]) -> list[str]:
        """Files inside those of ``names`` that are recorded subfolders, which erase did not put
        there (a user's notes in an exported ``unet/``): replacing the subfolder would take them."""
        found = []
        for name in names:
            folder = self.path / name
            if name not in self.files or folder.is_symlink() or not folder.is_dir():
                continue
            ours = set(self.files[name])
            found += [f"{name}/{rel}" for rel in _files_inside(folder) if rel not in ours]
        return sorted(found)

    def refuse_strays(self, names: list[str], option: str = "--output") -> None:
        found = self.strays(names)
        if found:
            raise InputError(
                f"{option} {self.path} holds {_shown(found)} inside a folder erase wrote; erase did not write "
                "it, and replacing the folder would delete it: move it away or choose another folder"
            )

    def claim(self, names: list[str], option: str = "--output") -> None:
        """Record ``names`` as ours before they are first written (write-ahead)."""
        new = [n for n in dict.fromkeys(names) if n not in self.names]
        if self.marked and not new:
            return
        self.check_claimable(new, option)
        self.path.mkdir(parents=True, exist_ok=True)
        self._write(self.names + new)

    def remove(self, names: list[str] | None = None) -> int:
        """Delete recorded names (all of them by default) and forget them; returns how many existed."""
        chosen = list(self.names) if names is None else names
        self.refuse_strays(chosen)  # before anything goes
        removed = sum(self._delete(name) for name in chosen)
        self._write([n for n in self.names if n not in chosen])
        return removed

    def move_in(self, staged: Path, last: str | None = None) -> list[str]:
        """Move every entry of ``staged`` (a temporary folder of ours) into the folder, replacing
        our entries of the same names; returns their names. ``last`` (model_index.json) is removed
        first and put back last, so the folder is loadable only when it is whole again."""
        items = sorted(staged.iterdir(), key=lambda p: p.name == last)
        self.refuse_strays([item.name for item in items])
        self.claim([item.name for item in items])
        contents = {item.name: _files_inside(item) for item in items if item.is_dir() and not item.is_symlink()}
        # Recorded before the move (write-ahead), as the names are: a kill in between leaves a
        # record of files not yet there, never files the record does not know.
        self.files = self.files | contents
        self._write(self.names)
        if last is not None:
            self._delete(last)
        for item in items:
            self._delete(item.name)
            item.rename(self.path / item.name)
        return [item.name for item in items]

    def replace_from(self, fill, staging: str = ".pipeline", last: str = "model_index.json") -> list[str]:
        """Let ``fill(tmp)`` write a pipeline into a temporary folder, then move its entries in
        (``move_in``; their names are returned); a kill at any point leaves the old entries or the
        new ones, and temp names that ``remove_leftovers`` recognises."""
        self.claim([staging])
        with atomic_folder(self.path / staging, overwrite=True) as tmp:
            fill(tmp)
        written = self.move_in(self.path / staging, last=last)
        self.remove([staging])
        return written

    def _delete(self, name: str) -> bool:
        if name not in self.names:
            raise ValueError(f"{name!r} is not recorded as ours in {self.path}")
        target = self.path / name
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            # The name goes in one rename, then the tree: a kill in the middle leaves a temp name
            # that ``remove_leftovers`` recognises, never half a folder under its own name (half
            # of a run's checkpoints/ made a finished run look like a damaged one).
            shutil.rmtree(move_aside(target))
        else:
            return False
        return True

    def remove_leftovers(self) -> int:
        """Delete the temporary files a killed writer left: only temp names of recorded names at the
        top of the folder, and temp names at the top of recorded subfolders (wholly ours)."""
        if not self.marked or not self.path.is_dir():
            return 0
        owned = set(self.names) | {MARKER_NAME}
        places = [(self.path, owned)] + [
            (self.path / n, None) for n in self.names if (self.path / n).is_dir() and not (self.path / n).is_symlink()
        ]
        removed = 0
        for folder, allowed in places:
            for item in folder.iterdir():
                found = _TEMP_NAME.match(item.name)
                if found is None or (allowed is not None and found.group("name") not in allowed):
                    continue
                shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()
                removed += 1
        return removed

    def _write(self, names: list[str]) -> None:
        files = {name: inside for name, inside in self.files.items() if name in names}
        record = {"format": MARKER_FORMAT, "kind": self.kind, "names": names} | ({"files": files} if files else {})
        write_json_atomic(self.path / MARKER_NAME, record)
        self.names, self.marked, self.files = names, True, files


def _files_inside(folder: Path) -> list[str]:
    """Every file (and link) under ``folder``, as paths relative to it: what a recorded subfolder
    holds, compared with what erase put there."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_symlink() or not p.is_dir())


def pipeline_entries(pipe) -> list[str]:
    """The top-level names ``save_pretrained`` writes for ``pipe``: its index and components."""
    return ["model_index.json", *(name for name, part in pipe.components.items() if part is not None)]


def is_within(path: str | Path, folder: str | Path) -> bool:
    """True when ``path`` is ``folder`` or lies below it (symlinks and ``..`` resolved)."""
    path, folder = Path(path).expanduser().resolve(), Path(folder).expanduser().resolve()
    return path == folder or folder in path.parents


def check_outside(output: str | Path, inputs: dict[str, str | Path | None], option: str = "--output") -> None:
    """Refuse an input that lives inside the output folder (a base model, a prompt list, a config):
    the command writes there, and ``--overwrite`` would delete it."""
    for flag, spec in inputs.items():
        if spec is None or str(spec) == "default" or not Path(spec).expanduser().exists():
            continue
        if is_within(spec, output):
            raise InputError(
                f"{flag} {spec} lies inside {option} {output}, which this command writes into; "
                f"choose an {option} outside it"
            )
