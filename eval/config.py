"""``EvalConfig``: everything ``erase eval`` does, typed; the CLI flags are its fields."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from eval.concepts import ERASED_HELP, Concept, parse_erased
from pipelines.generate import SEEDING_HELP
from pipelines.loading import MODEL_CONFIG_HELP, resolve_device
from prompts import InputError
from prompts.checks import check_types


@dataclass
class JudgedModels:
    """What `erase eval` and `erase attack` share: the models, the erased concept, the prompt
    list, the judge and how images are drawn."""

    runs: list[str] = field(metadata={"help": "run folders from `erase train` (or any model with --base)"})
    output: str = field(metadata={"help": "report folder: images/, metrics.json, report.html, report.md, figures/"})
    base: str | None = field(
        default=None, metadata={"help": "the original model (default: the base recorded in the run folder)"}
    )
    prompts: str | None = field(
        default=None,
        metadata={"help": "evaluation prompt CSV with class/style columns (default model: default/digits)"},
    )
    forget: str | None = field(
        default=None, metadata={"help": "prompt list of the erased concept (default: the run's forget prompts)"}
    )
    erased: str | None = field(default=None, metadata={"help": ERASED_HELP})
    judge: Literal["auto", "digit-style", "open-clip", "transformers"] = field(
        default="auto",
        metadata={"help": "classifier for UA/RA/IRA/CRA (auto: digit-style for the default model, else open-clip)"},
    )
    classifier: str | None = field(
        default=None,
        metadata={"help": "classifier folder: a transformers image-classification model for --judge transformers"},
    )
    clip_model: str = field(
        default="auto",
        metadata={
            "help": "open_clip architecture of --clip-weights (auto: ViT-B-32; for the default model with no "
            "--clip-weights, the shipped tiny CLIP trained on its drawings)"
        },
    )
    clip_weights: str | None = field(
        default=None,
        metadata={
            "help": "local open_clip weights (.safetensors), or a folder in open_clip's local-dir layout "
            "(open_clip_config.json + weights); enables CLIP score"
        },
    )
    images_per_prompt: int = field(default=10, metadata={"help": "images per prompt and model"})
    steps: int = field(default=20, metadata={"help": "sampler steps"})
    guidance_scale: float = field(default=5.0, metadata={"help": "classifier-free guidance scale"})
    dtype: Literal["float32", "float16", "bfloat16"] = field(default="float32", metadata={"help": "weights' precision"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    model_config: str | None = field(
        default=None,
        metadata={"help": MODEL_CONFIG_HELP},
    )
    allow_pickle: bool = field(default=False, metadata={"help": "allow pickled checkpoints (runs pickle!)"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    def __post_init__(self) -> None:
        check_types(self)
        if not self.runs:
            raise InputError("give at least one run folder to evaluate")
        for name in ("images_per_prompt", "steps"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not math.isfinite(self.guidance_scale):
            raise InputError(f"--guidance-scale must be a finite number, got {self.guidance_scale}")
        if self.erased is not None:
            self.erased_concepts()
        resolve_device(self.device)

    def input_paths(self) -> dict[str, str | None]:
        """Every input path, named by its option: --output must neither be inside one nor hold one."""
        paths = {"--prompts": self.prompts, "--forget": self.forget, "--base": self.base}
        paths |= {"--classifier": self.classifier, "--clip-weights": self.clip_weights}
        return paths | {f"run {spec}": spec for spec in self.runs}

    def clip_architecture(self) -> str:
        return "ViT-B-32" if self.clip_model == "auto" else self.clip_model

    def erased_concepts(self) -> list[Concept]:
        """``--erased "class=three;style=red"`` → [{"class": "three"}, {"style": "red"}]."""
        return parse_erased(self.erased or "")


@dataclass
class EvalConfig(JudgedModels):
    """`erase eval`: the shared settings plus FID's inputs and how images are seeded and batched."""

    fid_features: Literal["judge", "inception"] = field(
        default="judge",
        metadata={"help": "FID feature space: the judge's features, or Inception-v3 (needs --fid-weights)"},
    )
    fid_weights: str | None = field(
        default=None, metadata={"help": "Inception-v3 weights as .safetensors, for --fid-features inception"}
    )
    real_images: str | None = field(default=None, metadata={"help": "folder of real images: adds FID vs real"})
    attack: str | None = field(
        default=None,
        metadata={
            "help": "an `erase attack` folder of the same base model: its ASR before and after the attack, per "
            "model, goes into the report and metrics.json"
        },
    )
    seeding: Literal["per-image", "esd"] = field(default="per-image", metadata={"help": SEEDING_HELP})
    batch_size: int = field(default=40, metadata={"help": "images per pipeline call"})
    overwrite: bool = field(default=False, metadata={"help": "regenerate images made with other settings"})

    def input_paths(self) -> dict[str, str | None]:
        extra = {"--fid-weights": self.fid_weights, "--real-images": self.real_images, "--attack": self.attack}
        return super().input_paths() | extra

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, got {self.batch_size}")
