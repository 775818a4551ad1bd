"""Judges: classifiers that say which class and/or style each generated image shows.

A judge is named and registered here; ``erase eval --judge NAME`` picks one. Each predicts a
label per image on one or more axes (``class``, ``style``), using the label names of the
prompt list, and may offer a feature space for FID.

- ``digit-style``: the default model's shipped classifier (digits and styles).
- ``open-clip``: zero-shot open_clip over the prompt list's label set, with local weights.
- ``transformers``: an image-classification model from a local folder (or the HF cache), e.g. a
  ResNet-50 for Imagenette classes; its ImageNet label names are matched to the list's classes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import torch

from prompts import InputError

JUDGES: dict[str, Callable[..., Judge]] = {}


def register_judge(name: str):
    def wrap(factory):
        JUDGES[name] = factory
        return factory

    return wrap


class Judge(ABC):
    """``predict`` maps images in [-1, 1], (N, 3, H, W), to one label name per image per axis."""

    name: ClassVar[str]
    axes: tuple[str, ...]
    image_size: int | None = None  # images are resized to this before predict/features
    feature_name: str | None = None  # set when ``features`` is available (FID's feature space)

    @abstractmethod
    def predict(self, images: torch.Tensor) -> dict[str, list[str]]: ...

    def features(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"judge {self.name!r} has no feature space for FID")

    def label_names(self, axis: str) -> list[str]:
        """Every label the judge can answer on ``axis`` (an attack judged by one that cannot answer
        the erased label would report 0% whatever the model draws)."""
        return []


class DigitStyleJudge(Judge):
    name = "digit-style"

    def __init__(self, folder: str | Path | None = None):
        from eval.classifiers.digit_style import SHIPPED_FOLDER, load_digit_style_classifier
        from pipelines.default.render import DIGIT_WORDS

        self.model = load_digit_style_classifier(folder or SHIPPED_FOLDER).eval()
        self.digits = list(DIGIT_WORDS)
        self.axes = ("class", "style")
        self.image_size = 32
        self.feature_name = f"digit-style classifier features ({self.model.num_features}-d)"

    @torch.no_grad()
    def predict(self, images):
        digit_logits, style_logits = self.model(images)
        return {
            "class": [self.digits[i] for i in digit_logits.argmax(1).tolist()],
            "style": [self.model.styles[i] for i in style_logits.argmax(1).tolist()],
        }

    @torch.no_grad()
    def features(self, images):
        return self.model.features(images)

    def label_names(self, axis):
        return {"class": self.digits, "style": list(self.model.styles)}.get(axis, [])


@register_judge("digit-style")
def _digit_style(labels: dict[str, list[str]], classifier: str | None = None, **_) -> Judge:
    return DigitStyleJudge(classifier)


class ZeroShotJudge(Judge):
    """open_clip zero-shot: each axis's label set is scored with a text template per axis."""

    name = "open-clip"
    TEMPLATES: ClassVar[dict[str, str]] = {"class": "a photo of a {}", "style": "a painting in the style of {}"}

    def __init__(self, encoder, labels: dict[str, list[str]]):
        self.encoder = encoder
        self.labels = {axis: sorted(set(names)) for axis, names in labels.items() if names}
        if not self.labels:
            raise InputError("the prompt list has no class or style column, so there is nothing to classify")
        self.axes = tuple(self.labels)
        self.image_size = encoder.image_size
        self.feature_name = f"open_clip {encoder.architecture} image features"
        self.text = {
            axis: encoder.encode_text([self._template(axis).format(n) for n in names])
            for axis, names in self.labels.items()
        }

    def _template(self, axis: str) -> str:
        """The model's own template where it names one (the tiny CLIP was trained with its
        own), else CLIP's usual ones."""
        return self.encoder.templates.get(axis, self.TEMPLATES[axis])

    @torch.no_grad()
    def predict(self, images):
        image = self.encoder.encode_image(images)
        return {
            axis: [names[i] for i in (image @ self.text[axis].T).argmax(1).tolist()]
            for axis, names in self.labels.items()
        }

    @torch.no_grad()
    def features(self, images):
        return self.encoder.encode_image(images)

    def label_names(self, axis):
        return self.labels.get(axis, [])


@register_judge("open-clip")
def _open_clip(labels: dict[str, list[str]], clip=None, clip_model: str = "ViT-B-32", clip_weights=None, **_):
    """``clip``: an already loaded encoder (the runner shares one); else load ``clip_weights``."""
    if clip is None:
        from eval.clip_encoder import load_clip_encoder

        clip = load_clip_encoder(clip_model, clip_weights)
    return ZeroShotJudge(clip, labels)


class TransformersJudge(Judge):
    """Classes only. Each of the prompt list's class names is matched, case-insensitively, to the
    model labels that list it among their comma-separated synonyms ("church" → "church, church
    building"); an image gets the list class whose best matching logit is highest."""

    name = "transformers"

    def __init__(self, source: str, classes: list[str]):
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        try:
            self.model = AutoModelForImageClassification.from_pretrained(
                source, local_files_only=True, use_safetensors=True
            ).eval()
            self.processor = AutoImageProcessor.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError) as err:
            first = str(err).strip().splitlines()[0][:160]
            raise InputError(
                f"cannot load image classifier {source!r} offline ({first}); give a local folder with "
                "config.json, model.safetensors and preprocessor_config.json (pickled weights are not read)"
            ) from None
        synonyms = {
            int(i): [s.strip().lower() for s in str(text).split(",")] for i, text in self.model.config.id2label.items()
        }
        self.classes = sorted(set(classes))
        self.columns = {c: [i for i, names in synonyms.items() if c.lower() in names] for c in self.classes}
        missing = [c for c, ids in self.columns.items() if not ids]
        if missing:
            raise InputError(
                f"classifier {source!r} has no label named {', '.join(map(repr, missing))}; its labels are "
                f"{', '.join(list(self.model.config.id2label.values())[:5])}, ..."
            )
        self.axes = ("class",)

    @torch.no_grad()
    def predict(self, images):
        pixels = self.processor(images=list((images.float() + 1) / 2), return_tensors="pt", do_rescale=False)
        logits = self.model(**pixels).logits
        best = torch.stack([logits[:, ids].max(1).values for ids in self.columns.values()], dim=1)
        return {"class": [self.classes[i] for i in best.argmax(1).tolist()]}

    def label_names(self, axis):
        return self.classes if axis == "class" else []


@register_judge("transformers")
def _transformers(labels: dict[str, list[str]], classifier: str | None = None, **_) -> Judge:
    if not classifier:
        raise InputError("--judge transformers needs --classifier FOLDER (a local image-classification model)")
    if not labels.get("class"):
        raise InputError("--judge transformers judges classes, but the prompt list has no class column")
    return TransformersJudge(classifier, labels["class"])


def build_judge(name: str, labels: dict[str, list[str]], **options) -> Judge:
    if name not in JUDGES:
        raise InputError(f"unknown judge {name!r}; choose one of {', '.join(JUDGES)}")
    return JUDGES[name](labels, **options)


def check_judge_knows(
    judge: Judge, judge_name: str, labels: dict[str, list[str]], prompts: str, concepts: list[dict[str, str]]
) -> None:
    """Refuse a prompt list with a label the judge cannot answer on an axis the scores of
    ``concepts`` read (a concept's own axes; the class too for a style, for CRA): its images would
    count as not recognised, lowering RA, IRA or CRA with no word of why. (An erased label is
    check_judge_sees's.)"""
    axes = {axis for concept in concepts for axis in concept}
    axes |= {"class"} if "style" in axes else set()
    for axis, names in labels.items():
        if axis not in axes:
            continue
        unknown = sorted(set(names) - set(judge.label_names(axis)))
        if unknown:
            shown = ", ".join(f"{axis}={label}" for label in unknown[:3]) + (" …" if len(unknown) > 3 else "")
            raise InputError(
                f"judge {judge_name!r} cannot recognise {shown} of --prompts {prompts}; its images would count as not "
                "recognised and lower the retain scores: choose a --judge (or --classifier) that has these labels, "
                "or leave those prompts out"
            )


def check_judge_sees(judge: Judge, judge_name: str, concepts: list[dict[str, str]]) -> None:
    """Refuse a judge that cannot answer an erased label: every image of that concept would
    count as erased (UA 100% for a model that erased nothing), and no attack on it could be
    seen to succeed."""
    for concept in concepts:
        for axis, label in concept.items():
            if label not in judge.label_names(axis):
                raise InputError(
                    f"judge {judge_name!r} cannot recognise {axis}={label}, so it cannot tell whether it is gone; "
                    "choose a --judge (or --classifier) that has this label"
                )
