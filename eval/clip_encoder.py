"""An open_clip model behind two methods, for CLIP score and zero-shot judging, fully offline.

Weights come from local files only (nothing is downloaded), in one of two forms:

- an architecture name open_clip knows (``ViT-B-32``) and a ``.safetensors`` state dict for it,
  e.g. open_clip's ``open_clip_model.safetensors`` from a machine that was online;
- a folder in open_clip's own ``local-dir`` layout: ``open_clip_config.json`` (``model_cfg``,
  ``preprocess_cfg``) beside the weights. The shipped tiny CLIP for the default model
  (``eval/classifiers/tiny_clip``, made by ``scripts/train_tiny_clip.py``) is such a folder; its
  config also names the zero-shot templates it was trained with.

Pickled ``.bin/.pt`` files are refused unless ``allow_pickle``, and then read with
``weights_only=True``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from prompts import InputError

TINY_CLIP_DIR = Path(__file__).resolve().parent / "classifiers" / "tiny_clip"
WEIGHTS_NAME = "open_clip_model.safetensors"
CONFIG_NAME = "open_clip_config.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


class ClipEncoder:
    """``encode_image`` takes images in [-1, 1] (any size) and ``encode_text`` a list of strings;
    both return L2-normalised feature rows."""

    def __init__(self, model, tokenizer, architecture: str, mean, std, image_size: int, templates=None):
        self.model = model.eval()
        self.templates: dict[str, str] = dict(templates or {})  # zero-shot prompt per axis, if the model has its own
        self.tokenizer = tokenizer
        self.architecture = architecture
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.image_size = image_size

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() + 1) / 2
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
        x = (x.clamp(0, 1) - self.mean) / self.std
        return F.normalize(self.model.encode_image(x).float(), dim=-1)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return F.normalize(self.model.encode_text(self.tokenizer(texts)).float(), dim=-1)


def load_clip_encoder(architecture: str, weights: str | None, allow_pickle: bool = False) -> ClipEncoder:
    """``architecture`` + a weights file, or (``weights`` a folder) open_clip's local-dir layout."""
    import open_clip

    if weights is None:
        raise InputError(
            f"open_clip {architecture} needs local weights: pass --clip-weights FILE (the model's "
            "open_clip_model.safetensors, copied from a machine that was online) or a folder with "
            f"{CONFIG_NAME}; nothing is downloaded"
        )
    path = Path(weights)
    if path.is_dir():
        return load_clip_folder(path, allow_pickle)
    if not path.is_file():
        raise InputError(f"--clip-weights {path} does not exist; give the open_clip weights file")
    if architecture not in open_clip.list_models():
        raise InputError(f"unknown open_clip architecture {architecture!r}; see open_clip.list_models()")
    with _quiet():
        model = open_clip.create_model(architecture, pretrained=None)
    _load_weights(model, path, allow_pickle, f"open_clip {architecture}")
    return _encoder(model, open_clip.get_tokenizer(architecture), architecture, {}, {})


def load_clip_folder(folder: str | Path, allow_pickle: bool = False) -> ClipEncoder:
    """A folder in open_clip's local-dir layout: its config builds the model, and its one weights
    file (``open_clip_model.safetensors`` preferred) fills it."""
    import open_clip

    folder = Path(folder)
    try:
        record = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
        record["model_cfg"]  # noqa: B018 - open_clip's layout: the architecture sits under model_cfg
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(
            f"--clip-weights {folder} is a folder, but has no readable {CONFIG_NAME} with a model_cfg ({err}); "
            "give open_clip's local-dir folder or a weights file"
        ) from None
    weights = [folder / WEIGHTS_NAME] if (folder / WEIGHTS_NAME).is_file() else sorted(folder.glob("*.safetensors"))
    if not weights and allow_pickle:
        weights = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if len(weights) != 1:
        found = ", ".join(p.name for p in weights) or "none"
        raise InputError(
            f"{folder} should hold one open_clip weights file ({WEIGHTS_NAME}); found {found}"
            + ("" if weights or allow_pickle else " (pickled weights are read only with --allow-pickle)")
        )
    name = f"local-dir:{folder}"
    try:
        with _quiet():
            model = open_clip.create_model(name, load_weights=False)
    except Exception as err:  # noqa: BLE001 - open_clip raises many types for a config it cannot build
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise InputError(f"open_clip cannot build the model {folder / CONFIG_NAME} describes ({first})") from None
    _load_weights(model, weights[0], allow_pickle, f"the model in {folder / CONFIG_NAME}")
    templates = (record.get("concept_erase") or {}).get("zero_shot_templates")
    return _encoder(model, open_clip.get_tokenizer(name), folder.name, record.get("preprocess_cfg") or {}, templates)


class _quiet:
    """open_clip logs "initialized randomly" on creation; the weights follow at once."""

    def __enter__(self):
        logging.disable(logging.WARNING)

    def __exit__(self, *exc):
        logging.disable(logging.NOTSET)


def _load_weights(model, path: Path, allow_pickle: bool, what: str) -> None:
    if path.suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise InputError(f"{path} is a pickle ({path.suffix}); convert it to .safetensors or pass --allow-pickle")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state)
        model.load_state_dict(state)  # copies into the model's own dtype (shipped fp16 → fp32)
    except Exception as err:  # wrong file for this architecture, or not a weights file at all
        first = str(err).strip().splitlines()[0][:200]
        raise InputError(f"--clip-weights {path} does not fit {what}: {first}") from None


def _encoder(model, tokenizer, name: str, preprocess: dict, templates) -> ClipEncoder:
    import open_clip

    cfg = (getattr(model.visual, "preprocess_cfg", {}) or {}) | preprocess
    size = cfg.get("size", model.visual.image_size)
    size = size[0] if isinstance(size, list | tuple) else size
    mean = cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)
    std = cfg.get("std", open_clip.OPENAI_DATASET_STD)
    return ClipEncoder(model, tokenizer, name, mean, std, int(size), templates)
