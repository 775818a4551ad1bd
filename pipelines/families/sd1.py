"""Stable Diffusion 1.x: one CLIP ViT-L text encoder (QuickGELU), ε-prediction."""

from __future__ import annotations

import torch

from pipelines.conditioning import Conditioning
from pipelines.families.base import Family


@torch.no_grad()
def encode_text_states(pipe, prompts: list[str]) -> Conditioning:
    """One text encoder's last hidden states; "" is encoded as the pipeline encodes its
    unconditional prompt, so it stays the model's own unconditional input."""
    states, _ = pipe.encode_prompt(prompts, pipe.device, 1, do_classifier_free_guidance=False)
    return Conditioning(states)


class SD1(Family):
    name = "sd1"
    title = "Stable Diffusion 1.x"
    pipeline_class_name = "StableDiffusionPipeline"
    shipped_config = "sd15"
    original_marker = "cond_stage_model.transformer."

    def owns(self, pipe) -> bool:
        return super().owns(pipe) and not _openclip_text(pipe.text_encoder.config)

    def owns_index(self, index, folder) -> bool:
        return super().owns_index(index, folder) and not _openclip_text_in(folder)

    def encode(self, pipe, prompts):
        return encode_text_states(pipe, prompts)

    def to_original(self, pipe):
        from pipelines.single_file import sd1_original

        return sd1_original(pipe)


def _openclip_text(config) -> bool:
    """SD 2.x's text encoder is OpenCLIP's, converted: plain GELU where OpenAI's CLIP (SD 1.x)
    uses QuickGELU. Nothing else in a diffusers folder tells the two families apart."""
    return getattr(config, "hidden_act", None) == "gelu"


def _openclip_text_in(folder) -> bool:
    import json

    path = folder / "text_encoder" / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("hidden_act") == "gelu"
    except (OSError, ValueError):
        return False
