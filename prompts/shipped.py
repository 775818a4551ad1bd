"""Find a prompt list by path or by the name of a list shipped in ``prompts/lists``."""

from __future__ import annotations

from pathlib import Path

from prompts.errors import PromptFileError
from prompts.parse import SUFFIXES, read_prompt_file
from prompts.records import PromptRecord

LISTS_DIR = Path(__file__).parent / "lists"


def shipped_lists() -> list[str]:
    """Names of the shipped lists, e.g. ``default/digits`` or ``sd/imagenette``."""
    return sorted(str(p.relative_to(LISTS_DIR).with_suffix("")) for p in LISTS_DIR.rglob("*") if p.suffix in SUFFIXES)


def resolve_prompt_list(spec: str | Path) -> Path:
    """A path that exists wins; otherwise ``spec`` is looked up among the shipped lists."""
    path = Path(spec)
    if path.exists():
        return path
    for candidate in (LISTS_DIR / path, *(LISTS_DIR / f"{spec}{s}" for s in SUFFIXES)):
        if candidate.is_file():
            return candidate
    names = shipped_lists()
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    raise PromptFileError(path, None, f"no such file or shipped list (shipped: {shown}; `erase prompts` lists all)")


def load_prompts(spec: str | Path, seed: int = 0) -> list[PromptRecord]:
    """Read the prompt list at ``spec`` (a path or a shipped list name)."""
    return read_prompt_file(resolve_prompt_list(spec), seed=seed)
