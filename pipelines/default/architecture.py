"""Configs of the embedded default model: real diffusers/transformers classes, tiny sizes.

The shapes follow Stable Diffusion (4-channel latents, cross-attention on CLIP token states)
at toy scale: 32×32 RGB images, 8×8 latents. For CPU speed, attention stays off the
highest-resolution UNet level and uses few heads (``attention_head_dim`` is the head count).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from pipelines.tokenizer import MODEL_MAX_LENGTH, VOCAB_SIZE

TEXT_WIDTH = 32


def vae_config() -> dict[str, Any]:
    """32×32×3 ↔ 8×8×4: three resolution levels, a factor of 4 like SD's factor of 8."""
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )


def unet_config() -> dict[str, Any]:
    return dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=2,
        norm_num_groups=16,
    )


def text_encoder_config() -> CLIPTextConfig:
    """CLIP's full 49,408-token vocabulary (so any prompt tokenises) at a width of 32."""
    return CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=TEXT_WIDTH,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=MODEL_MAX_LENGTH,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        projection_dim=TEXT_WIDTH,
    )


def training_scheduler() -> DDPMScheduler:
    """SD's noise schedule (scaled-linear betas, 1,000 steps, ε-prediction)."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        prediction_type="epsilon",
    )


def sampling_scheduler() -> DDIMScheduler:
    """The sampler shipped in the pipeline folder: DDIM on the training schedule."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def build_untrained(seed: int = 0) -> tuple[AutoencoderKL, UNet2DConditionModel, CLIPTextModel]:
    """Freshly initialised VAE, UNet and text encoder, seeded."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(**vae_config())
    unet = UNet2DConditionModel(**unet_config())
    text_encoder = CLIPTextModel(text_encoder_config())
    return vae, unet, text_encoder
