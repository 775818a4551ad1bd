"""The Stable Diffusion families the toolkit erases from, and how each is recognised.

A family is one module plus a line in ``FAMILIES`` (see ``base.Family``). Families we know but do
not support are named in one line, so a user pointing at SD3 or Flux learns why at once.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.families.base import Family, UnsupportedFamilyError
from pipelines.families.sd1 import SD1
from pipelines.families.sd2 import SD2
from pipelines.families.sdxl import SDXL

FAMILIES: dict[str, Family] = {family.name: family for family in (SD1(), SD2(), SDXL())}

# pipeline class or single-file key fragment → the family's name, for the refusal
_UNSUPPORTED_CLASSES = {
    "StableDiffusion3Pipeline": "Stable Diffusion 3",
    "FluxPipeline": "Flux",
    "PixArtAlphaPipeline": "PixArt-α",
    "PixArtSigmaPipeline": "PixArt-Σ",
    "StableCascadeCombinedPipeline": "Stable Cascade",
    "KandinskyV22Pipeline": "Kandinsky 2.2",
    "StableDiffusionXLImg2ImgPipeline": "the SDXL refiner",
    "StableDiffusionInpaintPipeline": "SD inpainting",
    "StableDiffusionUpscalePipeline": "the SD upscaler",
}
_UNSUPPORTED_KEYS = {
    "joint_blocks.": "Stable Diffusion 3",
    "double_blocks.": "Flux",
    "double_layers.": "AuraFlow",
    "conditioner.embedders.0.model.": "the SDXL refiner",
    "clip_txt_mapper.": "Stable Cascade",
}
SUPPORTED = "SD 1.x, SD 2.x and SDXL"


def family_of(pipe) -> Family:
    """The family of a loaded pipeline."""
    for family in FAMILIES.values():
        if family.owns(pipe):
            return family
    raise UnsupportedFamilyError(_refusal(type(pipe).__name__))


def family_of_folder(folder: Path) -> Family:
    """The family of a diffusers pipeline folder, from its ``model_index.json`` (read only)."""
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    for family in FAMILIES.values():
        if family.owns_index(index, folder):
            return family
    raise UnsupportedFamilyError(_refusal(str(index.get("_class_name"))))


def family_of_keys(keys: set[str]) -> Family | None:
    """The family of an original-layout single file from its tensor names; None when no family's
    keys are there (a UNet-only or diffusers-layout file: the caller says what it needs)."""
    for fragment, title in _UNSUPPORTED_KEYS.items():
        if any(fragment in key for key in keys):
            raise UnsupportedFamilyError(_refusal(title, known=True))
    for family in FAMILIES.values():
        if family.owns_keys(keys):
            return family
    return None


def _refusal(what: str, known: bool = False) -> str:
    title = _UNSUPPORTED_CLASSES.get(what, what if known else None)
    named = f"{title} models are" if title else (f"a {what} is" if what != "None" else "this pipeline class is")
    return f"{named} not supported: erase works on {SUPPORTED} pipelines; give one of those as --model"
