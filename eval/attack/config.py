"""``AttackConfig``: everything ``erase attack`` does, typed; the CLI flags are its fields.

The attack's defaults are UnlearnDiffAtk's for objects and styles (Zhang et al., 2023, and its
code's configs): 3 prepended tokens, Adam at lr 0.01 with weight decay 0.1 on the token
probabilities, 40 iterations per diffusion timestep, timesteps visited in ascending order
10, 30, ..., 990 (50 of them), the judge consulted after each timestep's iterations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from eval.attack.search import SEARCHES
from eval.config import JudgedModels
from prompts import InputError


@dataclass
class AttackConfig(JudgedModels):
    output: str = field(
        metadata={"help": "attack folder: attack.json, report.md and images/ (each model's images before and after)"}
    )
    search: Literal["text-grad", "soft", "inversion"] = field(
        default="text-grad",
        metadata={
            "help": "text-grad: discrete tokens found through gradients (UnlearnDiffAtk), a prompt a user can type; "
            "soft: free embeddings per image, no prompt exists for them (an upper bound on any k-token prompt); "
            "inversion: the recovery probe, one set of embeddings learned from all the concept's images at once "
            "(textual inversion): its 'after' is the share of images the final embedding recovers"
        },
    )
    tokens: int = field(default=3, metadata={"help": "adversarial tokens put in front of each prompt (paper: 3)"})
    timesteps: int = field(
        default=50,
        metadata={
            "help": "diffusion timesteps the attack loss is taken at, one after another in ascending order, evenly "
            "spread over the schedule (paper: 50, i.e. t = 10, 30, ..., 990); the judge looks after each"
        },
    )
    iterations: int = field(default=40, metadata={"help": "optimisation steps per timestep (paper: 40)"})
    lr: float = field(default=0.01, metadata={"help": "Adam's learning rate (paper: 0.01)"})
    weight_decay: float = field(default=0.1, metadata={"help": "Adam's weight decay, text-grad only (paper: 0.1)"})
    images_per_prompt: int = field(
        default=2,
        metadata={
            "help": "attacks per prompt showing the erased concept, each on its own seed (the eval's seeds); "
            "the paper attacks each prompt once, at its evaluation seed (1): the attack's time grows with this"
        },
    )
    batch_size: int = field(
        default=8,
        metadata={
            "help": "images attacked together: one UNet forward and backward over this many per iteration (memory); "
            "--search inversion learns one embedding per batch"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of the attack's noise and token draws"})
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "replace an earlier attack's results in --output (attack.json, report.md, the images of the "
            "models attacked again); without it such a folder is refused, so one attack's results are not lost "
            "to the next"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.search not in SEARCHES:
            raise InputError(f"--search must be one of {', '.join(SEARCHES)}, got {self.search!r}")
        for name in ("tokens", "timesteps", "iterations", "batch_size"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.tokens > 20:
            raise InputError(f"--tokens must be at most 20 (the prompt has 77 token places), got {self.tokens}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"--lr must be a positive number, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise InputError(f"--weight-decay must be zero or positive, got {self.weight_decay}")
