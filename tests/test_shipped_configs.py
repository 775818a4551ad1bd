"""The diffusers configs shipped for SD 1.5, SD 2.1 (768, v) and SDXL base describe the real models.

Each folder under ``pipelines/families/configs/`` is the Hugging Face repository's pipeline folder
without weights or tokenizer vocabularies (its README names the revisions). Building the models on
the meta device costs no memory, so the published parameter counts check each architecture as a
whole; the values that leave the counts unchanged (head sizes, linear projections, sample sizes,
prediction type, pad token) are checked one by one.
"""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import diffusers
import pytest
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

import pipelines
from pipelines.tokenizer import write_clip_tokenizer_files

CONFIGS = Path(pipelines.__file__).parent / "families" / "configs"
FAMILIES = ["sd15", "sd21", "sdxl"]

# Trainable parameters of the released models (e.g. diffusers' ``num_parameters`` docstring gives
# SD 1.5's UNet as 859,520,964); the CLIP ones are derived by hand in ``clip_text_parameters``.
UNET_PARAMETERS = {"sd15": 859_520_964, "sd21": 865_910_724, "sdxl": 2_567_463_684}
VAE_PARAMETERS = 83_653_863  # the same KL-f8 autoencoder in all three
TEXT_PARAMETERS = {
    "sd15": {"text_encoder": 123_060_480},
    "sd21": {"text_encoder": 340_387_840},
    "sdxl": {"text_encoder": 123_060_480, "text_encoder_2": 694_659_840},
}

# Values that decide the architecture or the sampling but not (all of) the parameter count.
UNET_FACTS = {
    "sd15": {
        "block_out_channels": [320, 640, 1280, 1280],
        "layers_per_block": 2,
        "attention_head_dim": 8,
        "cross_attention_dim": 768,
        "use_linear_projection": False,
        "sample_size": 64,
        "addition_embed_type": None,
    },
    "sd21": {
        "block_out_channels": [320, 640, 1280, 1280],
        "layers_per_block": 2,
        "attention_head_dim": [5, 10, 20, 20],
        "cross_attention_dim": 1024,
        "use_linear_projection": True,
        "sample_size": 96,
        "upcast_attention": True,
        "addition_embed_type": None,
    },
    "sdxl": {
        "block_out_channels": [320, 640, 1280],
        "layers_per_block": 2,
        "transformer_layers_per_block": [1, 2, 10],
        "attention_head_dim": [5, 10, 20],
        "cross_attention_dim": 2048,
        "use_linear_projection": True,
        "sample_size": 128,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,
    },
}
VAE_FACTS = {
    "sd15": {"scaling_factor": 0.18215, "sample_size": 512},
    "sd21": {"scaling_factor": 0.18215, "sample_size": 768},
    "sdxl": {"scaling_factor": 0.13025, "sample_size": 1024, "force_upcast": True},
}
TEXT_FACTS = {  # (hidden, layers, heads, intermediate, activation, projection_dim)
    "sd15": {"text_encoder": (768, 12, 12, 3072, "quick_gelu", 768)},
    "sd21": {"text_encoder": (1024, 23, 16, 4096, "gelu", 512)},
    "sdxl": {
        "text_encoder": (768, 12, 12, 3072, "quick_gelu", 768),
        "text_encoder_2": (1280, 32, 20, 5120, "gelu", 1280),
    },
}
SCHEDULERS = {  # class, prediction_type, timestep_spacing
    "sd15": ("PNDMScheduler", "epsilon", "leading"),
    "sd21": ("DDIMScheduler", "v_prediction", "leading"),
    "sdxl": ("EulerDiscreteScheduler", "epsilon", "leading"),
}
PIPELINES = {"sd15": "StableDiffusionPipeline", "sd21": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}
PAD_TOKENS = {  # tokenizer folder → (pad token, its id)
    "sd15": {"tokenizer": ("<|endoftext|>", 49407)},
    "sd21": {"tokenizer": ("!", 0)},
    "sdxl": {"tokenizer": ("<|endoftext|>", 49407), "tokenizer_2": ("!", 0)},
}


TEXT_MODELS = {"CLIPTextModel": CLIPTextModel, "CLIPTextModelWithProjection": CLIPTextModelWithProjection}


def clip_text_parameters(width: int, layers: int, intermediate: int, projection: bool = False) -> int:
    """Parameters of a CLIP text transformer (vocabulary 49408, 77 positions).

    embeddings (49408 + 77)·d; per layer 4(d² + d) attention + (2·d·f + f + d) feed-forward +
    4d layer norms; final norm 2d; projection d² without bias. So
    ViT-L (d=768, f=3072, 12 layers): 38,004,480 + 12 × 7,087,872 + 1,536 = 123,060,480;
    OpenCLIP ViT-H less its last layer (d=1024, f=4096, 23): 50,672,640 + 23 × 12,596,224 + 2,048
    = 340,387,840; OpenCLIP ViT-bigG (d=1280, f=5120, 32) with projection: 63,340,800
    + 32 × 19,677,440 + 2,560 + 1,638,400 = 694,659,840.
    """
    d, f = width, intermediate
    per_layer = 4 * (d * d + d) + (2 * d * f + f + d) + 4 * d
    return (49408 + 77) * d + layers * per_layer + 2 * d + (d * d if projection else 0)


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _json(family: str, name: str) -> dict:
    return json.loads((CONFIGS / family / name).read_text(encoding="utf-8"))


def test_hand_derived_clip_counts_match_the_published_ones():
    assert clip_text_parameters(768, 12, 3072) == TEXT_PARAMETERS["sd15"]["text_encoder"]
    assert clip_text_parameters(1024, 23, 4096) == TEXT_PARAMETERS["sd21"]["text_encoder"]
    assert clip_text_parameters(1280, 32, 5120, projection=True) == TEXT_PARAMETERS["sdxl"]["text_encoder_2"]


@pytest.mark.parametrize("family", FAMILIES)
def test_only_configs_are_shipped(family):
    """No weights and no vocabularies: the loader writes vocab.json/merges.txt at load time."""
    files = {path.relative_to(CONFIGS / family).as_posix() for path in (CONFIGS / family).rglob("*") if path.is_file()}
    expected = {"model_index.json", "unet/config.json", "vae/config.json", "scheduler/scheduler_config.json"}
    expected |= {f"{name}/config.json" for name in TEXT_PARAMETERS[family]}
    expected |= {f"{name}/tokenizer_config.json" for name in PAD_TOKENS[family]}
    assert files == expected


@pytest.mark.parametrize("family", FAMILIES)
def test_model_index_names_the_pipeline_and_its_components(family):
    index = DiffusionPipeline.load_config(str(CONFIGS / family))
    assert index["_class_name"] == PIPELINES[family]
    pipeline_class = getattr(diffusers, index["_class_name"])
    expected, _ = pipeline_class._get_signature_keys(pipeline_class)
    required = set(expected) - set(pipeline_class._optional_components)
    listed = {name for name, value in index.items() if not name.startswith("_") and isinstance(value, list)}
    assert required <= listed, f"{family}: model_index.json lacks {sorted(required - listed)}"
    for name in listed:
        library, class_name = index[name]
        if library is None:  # an absent component: the safety checker and its feature extractor
            assert name in pipeline_class._optional_components
            continue
        assert (CONFIGS / family / name).is_dir(), f"{family}: {name} has no config folder"
        module = importlib.import_module(library)
        assert hasattr(module, class_name), f"{family}: {library}.{class_name} does not exist"
    if family == "sdxl":
        assert index["force_zeros_for_empty_prompt"] is True
    else:
        assert index["requires_safety_checker"] is False and index["safety_checker"] == [None, None]


@pytest.mark.parametrize("family", FAMILIES)
def test_unet_and_vae_have_the_published_sizes(family):
    unet_config = UNet2DConditionModel.load_config(str(CONFIGS / family / "unet"))
    vae_config = AutoencoderKL.load_config(str(CONFIGS / family / "vae"))
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(unet_config)
        vae = AutoencoderKL.from_config(vae_config)
    assert next(unet.parameters()).device.type == "meta"
    assert _count(unet) == UNET_PARAMETERS[family]
    assert _count(vae) == VAE_PARAMETERS
    for key, value in UNET_FACTS[family].items():
        got = unet.config[key]
        assert (list(got) if isinstance(got, tuple) else got) == value, f"{family} unet {key}"
    for key, value in VAE_FACTS[family].items():
        assert vae.config[key] == value, f"{family} vae {key}"


@pytest.mark.parametrize("family", FAMILIES)
def test_text_encoders_have_the_published_sizes(family):
    for name, expected in TEXT_PARAMETERS[family].items():
        config = CLIPTextConfig.from_pretrained(str(CONFIGS / family / name))
        (architecture,) = config.architectures
        with init_empty_weights():
            model = TEXT_MODELS[architecture](config)
        assert _count(model) == expected, f"{family} {name}"
        hidden, layers, heads, intermediate, activation, projection = TEXT_FACTS[family][name]
        got = (
            config.hidden_size,
            config.num_hidden_layers,
            config.num_attention_heads,
            config.intermediate_size,
            config.hidden_act,
            config.projection_dim,
        )
        assert got == (hidden, layers, heads, intermediate, activation, projection), f"{family} {name}"
        assert architecture == _json(family, "model_index.json")[name][1]


@pytest.mark.parametrize("family", FAMILIES)
def test_scheduler_class_and_prediction_type(family):
    class_name, prediction_type, spacing = SCHEDULERS[family]
    scheduler_class = getattr(diffusers, class_name)
    scheduler = scheduler_class.from_config(scheduler_class.load_config(str(CONFIGS / family / "scheduler")))
    assert _json(family, "model_index.json")["scheduler"] == ["diffusers", class_name]
    assert scheduler.config.prediction_type == prediction_type
    assert scheduler.config.timestep_spacing == spacing
    assert scheduler.config.steps_offset == 1
    assert (scheduler.config.beta_schedule, scheduler.config.beta_start, scheduler.config.beta_end) == (
        "scaled_linear",
        0.00085,
        0.012,
    )
    assert scheduler.config.num_train_timesteps == 1000


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizers_load_with_the_written_vocabulary(family, tmp_path):
    """The loader's path: copy the shipped folder, add vocab.json/merges.txt, load CLIPTokenizer."""
    for name, (pad_token, pad_id) in PAD_TOKENS[family].items():
        folder = tmp_path / name
        shutil.copytree(CONFIGS / family / name, folder)
        write_clip_tokenizer_files(folder, config=False)
        assert _json(family, f"{name}/tokenizer_config.json")["tokenizer_class"] == "CLIPTokenizer"
        tokenizer = CLIPTokenizer.from_pretrained(str(folder))
        assert (tokenizer.pad_token, tokenizer.pad_token_id) == (pad_token, pad_id), f"{family} {name}"
        assert tokenizer.model_max_length == 77
        ids = tokenizer("a cat", padding="max_length", max_length=6).input_ids
        assert ids == [49406, 320, 2368, 49407, pad_id, pad_id]
