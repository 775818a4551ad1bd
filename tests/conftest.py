"""Shared fixtures: tiny seeded Stable Diffusion components built from configs, offline.

Sizes follow diffusers' own pipeline tests (block_out_channels=(4, 8)-scale). The tokenizer
is built from the BPE vocabulary inside open_clip, so nothing touches a model hub.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from pipelines.tokenizer import VOCAB_SIZE, build_clip_tokenizer


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    return build_clip_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def tiny_components(tokenizer) -> dict:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        cross_attention_dim=16,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=VOCAB_SIZE,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return dict(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory, tokenizer) -> Path:
    """A saved tiny SD pipeline folder (16×16 images, 8×8 latents)."""
    folder = tmp_path_factory.mktemp("tiny-sd")
    StableDiffusionPipeline(**tiny_components(tokenizer)).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture()
def write(tmp_path):
    """write(name, text or bytes) → path inside the test's tmp folder."""

    def _write(name: str, content: str | bytes) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    return _write


@pytest.fixture(autouse=True, scope="session")
def _bank_cache(tmp_path_factory):
    """Latent banks go to a per-session folder, never to the user's cache."""
    import os

    os.environ["ERASE_CACHE_DIR"] = str(tmp_path_factory.mktemp("erase-cache"))
