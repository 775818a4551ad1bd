"""A prompt record: the unit that flows from prompt lists to generation, training and eval."""

from __future__ import annotations

from dataclasses import dataclass, field

# Optional CSV columns that say what a prompt should show (eval reads them).
LABEL_COLUMNS = ("concept", "class", "style")
# Optional CSV column that training reads (see PromptRecord.anchor).
ANCHOR_COLUMN = "anchor"


@dataclass(frozen=True)
class PromptRecord:
    """One prompt to draw.

    ``case_id`` identifies the record within its list (ESD's ``case_number``); ``seed`` is the
    seed its images start from (ESD's ``evaluation_seed``); ``labels`` holds any of
    ``concept``/``class``/``style`` that the list provides. ``anchor`` (optional CSV column) is
    what erasure steers this prompt toward instead of the unconditional prediction, e.g. the same
    digit in the plain style when a style is erased. ``guidance``, ``height`` and ``width`` are
    per-row generation settings some benchmarks carry; ``metadata`` keeps every other column.
    """

    case_id: str
    prompt: str
    seed: int
    labels: dict[str, str] = field(default_factory=dict)
    anchor: str | None = None
    guidance: float | None = None  # this row's guidance scale (I2P's evaluation_guidance), else the run's
    height: int | None = None  # this row's image size, else the run's
    width: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)  # the list's other columns, carried along

    def to_json(self) -> dict:
        extra = {"anchor": self.anchor} if self.anchor is not None else {}
        extra |= {k: v for k in ("guidance", "height", "width") if (v := getattr(self, k)) is not None}
        extra |= {"metadata": self.metadata} if self.metadata else {}
        return {"case_id": self.case_id, "prompt": self.prompt, "seed": self.seed, **self.labels, **extra}
