"""What a Stable Diffusion family is to the toolkit: one subclass per family, registered.

A family knows the few things that differ between SD 1.x, SD 2.x and SDXL: which diffusers
pipeline class loads it, how to recognise it (a loaded pipeline, a ``model_index.json``, the keys
of an original single file), how to turn prompts into the UNet's conditioning, and which
original single-file layout other SD tools read. Everything else in the toolkit is shared.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipelines.conditioning import Conditioning
from pipelines.tokenizer import EOS_TOKEN

CONFIGS_DIR = Path(__file__).parent / "configs"


class Family:
    name: str = ""  # the short name used in messages and run records: sd1, sd2, sdxl
    title: str = ""  # for people: "Stable Diffusion 1.x"
    pipeline_class_name: str = ""  # the diffusers pipeline class that loads it
    shipped_config: str = ""  # folder under configs/ holding the standard model's configs
    # a key prefix found only in this family's original single files
    original_marker: str = ""
    # tokenizer folder → pad token, for writing the shipped configs' vocab files
    tokenizer_pads: dict[str, str] = {"tokenizer": EOS_TOKEN}

    @property
    def pipeline_class(self):
        import diffusers

        return getattr(diffusers, self.pipeline_class_name)

    @property
    def config_dir(self) -> Path:
        return CONFIGS_DIR / self.shipped_config

    def owns(self, pipe) -> bool:
        """Whether a loaded pipeline is of this family."""
        return type(pipe).__name__ == self.pipeline_class_name

    def owns_index(self, index: dict, folder: Path) -> bool:
        """Whether a pipeline folder (its ``model_index.json`` as ``index``) is of this family."""
        return index.get("_class_name") == self.pipeline_class_name

    def owns_keys(self, keys: set[str]) -> bool:
        """Whether an original-layout single file (its tensor names) is of this family."""
        return any(key.startswith(self.original_marker) for key in keys)

    def encode(self, pipe, prompts: list[str]) -> Conditioning:
        raise NotImplementedError

    def to_original(self, pipe) -> dict[str, torch.Tensor]:
        """The pipeline's weights in this family's original single-file layout."""
        raise NotImplementedError

    def default_size(self, pipe) -> tuple[int, int]:
        """(height, width) in pixels the model was trained at."""
        size = pipe.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else size
        return h * pipe.vae_scale_factor, w * pipe.vae_scale_factor

    def latent_size(self, pipe) -> tuple[int, int]:
        size = pipe.unet.config.sample_size
        return (size, size) if isinstance(size, int) else tuple(size)


class UnsupportedFamilyError(ValueError):
    """A model of a family the toolkit does not erase from (SD3, Flux, ...)."""
