"""An open_clip model behind two methods, for CLIP score and zero-shot judging, fully offline.

Weights come from a local file only (nothing is downloaded): a ``.safetensors`` state dict for
the named architecture, e.g. open_clip's ``open_clip_model.safetensors`` for ViT-B-32 from a
machine that was online. Pickled ``.bin/.pt`` files are refused unless ``allow_pickle``, and then
read with ``weights_only=True``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from prompts import InputError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


class ClipEncoder:
    """``encode_image`` takes images in [-1, 1] (any size) and ``encode_text`` a list of strings;
    both return L2-normalised feature rows."""

    def __init__(self, model, tokenizer, architecture: str, mean, std, image_size: int):
        self.model = model.eval()
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
    import open_clip

    if weights is None:
        raise InputError(
            f"open_clip {architecture} needs local weights: pass --clip-weights FILE (the model's "
            "open_clip_model.safetensors, copied from a machine that was online); nothing is downloaded"
        )
    path = Path(weights)
    if not path.is_file():
        raise InputError(f"--clip-weights {path} does not exist; give the open_clip weights file")
    if architecture not in open_clip.list_models():
        raise InputError(f"unknown open_clip architecture {architecture!r}; see open_clip.list_models()")
    if path.suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise InputError(f"{path} is a pickle ({path.suffix}); convert it to .safetensors or pass --allow-pickle")
    logging.disable(logging.WARNING)  # open_clip warns "initialized randomly"; our weights follow
    try:
        model = open_clip.create_model(architecture, pretrained=None)
    finally:
        logging.disable(logging.NOTSET)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state)
        model.load_state_dict(state)
    except Exception as err:  # wrong file for this architecture, or not a weights file at all
        first = str(err).strip().splitlines()[0][:200]
        raise InputError(f"--clip-weights {path} does not fit open_clip {architecture}: {first}") from None
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = cfg.get("size", model.visual.image_size)
    size = size[0] if isinstance(size, list | tuple) else size
    mean = cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)
    std = cfg.get("std", open_clip.OPENAI_DATASET_STD)
    return ClipEncoder(model, open_clip.get_tokenizer(architecture), architecture, mean, std, int(size))
