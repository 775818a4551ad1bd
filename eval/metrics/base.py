"""What every metric sees, and the registry that names metrics.

A metric is one function ``compute(ctx, model) -> {key: value dict}`` registered with
``@register_metric``; the runner calls every registered metric for every model. Each value
carries its definition and sample count, so ``metrics.json`` explains itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from eval.concepts import Concept
from eval.images import load_images


@dataclass
class ModelImages:
    """One evaluated model's images: manifest entries in order, and the judge's labels for them."""

    name: str
    folder: Path
    entries: list[dict]
    predictions: dict[str, list[str]] = field(default_factory=dict)
    is_base: bool = False

    def paths(self, rows: list[int]) -> list[Path]:
        return [self.folder / self.entries[i]["file"] for i in rows]


@dataclass
class EvalContext:
    """``erased`` lists the erased concepts (eval/concepts.py), e.g. [{"class": "three"}];
    ``forget_rows`` are the manifest rows (same for every model) whose prompt shows any of them."""

    models: list[ModelImages]
    erased: list[Concept]
    forget_rows: list[int]
    judge: object | None = None
    clip: object | None = None
    features: object | None = None  # FID's feature space: ``features(images)``, ``feature_name``, ``image_size``
    real_images: list[Path] | None = None
    image_cache: dict = field(default_factory=dict)

    @property
    def base(self) -> ModelImages | None:
        return next((m for m in self.models if m.is_base), None)

    @property
    def retain_rows(self) -> list[int]:
        forget = set(self.forget_rows)
        return [i for i in range(len(self.models[0].entries)) if i not in forget]

    def images(self, model: ModelImages, rows: list[int], size: int | None) -> torch.Tensor:
        key = (model.name, tuple(rows), size)
        if key not in self.image_cache:
            self.image_cache[key] = load_images(model.paths(rows), size=size)
        return self.image_cache[key]


def value(number: float | None, n: int, definition: str, **extra) -> dict:
    return {"value": None if number is None else round(float(number), 4), "definition": definition, "n": n} | extra


Metric = Callable[[EvalContext, ModelImages], dict[str, dict]]
METRICS: dict[str, Metric] = {}


def register_metric(name: str):
    def wrap(fn: Metric) -> Metric:
        METRICS[name] = fn
        return fn

    return wrap
