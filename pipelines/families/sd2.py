"""Stable Diffusion 2.x: an OpenCLIP ViT-H text encoder (GELU; pads with "!"), v-prediction
for the 768-px models; conditioning as SD 1.x."""

from __future__ import annotations

from pipelines.families.base import Family
from pipelines.families.sd1 import _openclip_text, _openclip_text_in, encode_text_states


class SD2(Family):
    name = "sd2"
    title = "Stable Diffusion 2.x"
    pipeline_class_name = "StableDiffusionPipeline"
    shipped_config = "sd21"
    original_marker = "cond_stage_model.model."
    tokenizer_pads = {"tokenizer": "!"}

    def owns(self, pipe) -> bool:
        return super().owns(pipe) and _openclip_text(pipe.text_encoder.config)

    def owns_index(self, index, folder) -> bool:
        return super().owns_index(index, folder) and _openclip_text_in(folder)

    def encode(self, pipe, prompts):
        return encode_text_states(pipe, prompts)

    def to_original(self, pipe):
        from pipelines.single_file import sd2_original

        return sd2_original(pipe)
