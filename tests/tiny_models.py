"""Tiny, architecturally faithful SD 1.x, SD 2.x and SDXL components built from configs.

Sizes follow diffusers' own pipeline tests (block_out_channels=(8, 16)-scale), but each family
keeps what sets it apart: SD 2.x a GELU (OpenCLIP-style) text encoder, linear projections,
per-level head counts, v-prediction and "!" padding; SDXL two text encoders (the second with a
projection), the text-time added embedding, per-level transformer depths and Euler sampling.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from erase.config import TrainConfig
from pipelines.tokenizer import VOCAB_SIZE

TEXT_WIDTH = 16
# SDXL's second encoder is wider than its first, as in the real model (1280 vs 768): diffusers'
# single-file loader tells the two embedders apart only by width
TEXT_WIDTH_2 = 24
TIME_EMBED = 8  # SDXL's addition_time_embed_dim, per time id


def _vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    ).eval()


def _text_config(
    layers: int, hidden_act: str = "quick_gelu", pad_token_id: int = 49407, width: int = TEXT_WIDTH, **extra
) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=width,
        intermediate_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act=hidden_act,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=pad_token_id,
        **extra,
    )


def _ddim(prediction_type: str = "epsilon") -> DDIMScheduler:
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )


def sd1_components(tokenizer) -> dict:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    vae = _vae()
    text_encoder = CLIPTextModel(_text_config(layers=1))
    return dict(
        unet=unet.eval(),
        vae=vae,
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        scheduler=_ddim(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def sd2_components(tokenizer_bang) -> dict:
    """SD 2.1-like: v-prediction, linear projections, per-level heads, GELU text encoder."""
    torch.manual_seed(1)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        norm_num_groups=4,
    )
    vae = _vae()
    text_encoder = CLIPTextModel(_text_config(layers=2, hidden_act="gelu", pad_token_id=0))
    return dict(
        unet=unet.eval(),
        vae=vae,
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer_bang,
        scheduler=_ddim("v_prediction"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def sdxl_components(tokenizer, tokenizer_bang) -> dict:
    """SDXL-like: two text encoders (states concatenated; the second's pooled, projected output
    and six time ids feed the added embedding), per-level transformer depth, Euler sampling."""
    torch.manual_seed(2)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=2,
        cross_attention_dim=TEXT_WIDTH + TEXT_WIDTH_2,
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 2),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED,
        projection_class_embeddings_input_dim=6 * TIME_EMBED + TEXT_WIDTH_2,
        norm_num_groups=4,
    )
    vae = _vae()
    text_encoder = CLIPTextModel(_text_config(layers=2))
    text_encoder_2 = CLIPTextModelWithProjection(
        _text_config(layers=2, hidden_act="gelu", pad_token_id=0, width=TEXT_WIDTH_2, projection_dim=TEXT_WIDTH_2)
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    return dict(
        unet=unet.eval(),
        vae=vae,
        text_encoder=text_encoder.eval(),
        text_encoder_2=text_encoder_2.eval(),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_bang,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )


def save_sd1(folder, tokenizer) -> None:
    StableDiffusionPipeline(**sd1_components(tokenizer)).save_pretrained(folder, safe_serialization=True)


def save_sd1_with_safety_checker(folder, tokenizer) -> None:
    """As SD 1.4-derived releases ship (MACE's, for one): a safety checker and its image
    processor in the folder. This tiny checker flags every image (its concept thresholds are
    below any cosine), so whatever it is allowed to check comes out black."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    small = dict(hidden_size=16, intermediate_size=16, num_attention_heads=2, num_hidden_layers=1)
    torch.manual_seed(3)
    config = CLIPConfig(text_config=small, vision_config=small | dict(image_size=32, patch_size=16), projection_dim=16)
    checker = StableDiffusionSafetyChecker(config).eval()
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(-2.0)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    components = sd1_components(tokenizer) | dict(
        safety_checker=checker, feature_extractor=processor, requires_safety_checker=True
    )
    StableDiffusionPipeline(**components).save_pretrained(folder, safe_serialization=True)


def save_sd2(folder, tokenizer_bang) -> None:
    StableDiffusionPipeline(**sd2_components(tokenizer_bang)).save_pretrained(folder, safe_serialization=True)


def save_sdxl(folder, tokenizer, tokenizer_bang) -> None:
    StableDiffusionXLPipeline(**sdxl_components(tokenizer, tokenizer_bang)).save_pretrained(
        folder, safe_serialization=True
    )


def tiny_train_config(model, forget: Path, retain: Path, output: Path, **overrides) -> TrainConfig:
    """A run that takes seconds: 3 steps of 2 latents from a one-latent, one-step bank."""
    settings = dict(steps=3, batch_size=2, bank_size=1, bank_steps=1, progress=False) | overrides
    return TrainConfig(output=str(output), model=str(model), forget=str(forget), retain=str(retain), **settings)


def finished_run(folder: Path) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """A finished run's log lines without their wall times, and its UNet weights: what two runs
    that must be bit-identical are compared on."""
    log = [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in open(folder / "train_log.jsonl")]
    return log, load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
