"""A prompt record: the unit that flows from prompt lists to generation, training and eval."""

from __future__ import annotations

from dataclasses import dataclass, field

# Optional CSV columns that say what a prompt should show (eval reads them).
LABEL_COLUMNS = ("concept", "class", "style")


@dataclass(frozen=True)
class PromptRecord:
    """One prompt to draw.

    ``case_id`` identifies the record within its list (ESD's ``case_number``); ``seed`` is the
    seed its images start from (ESD's ``evaluation_seed``); ``labels`` holds any of
    ``concept``/``class``/``style`` that the list provides.
    """

    case_id: str
    prompt: str
    seed: int
    labels: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"case_id": self.case_id, "prompt": self.prompt, "seed": self.seed, **self.labels}
