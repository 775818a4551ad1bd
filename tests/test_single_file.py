"""The single-file writer for SD 1.x, SD 2.x and SDXL, checked from both sides.

diffusers' ``from_single_file`` is the independent reader: a file it converts back to bit-equal
weights is complete and correctly packed. The keys are then checked against the original layouts
A1111 and ComfyUI read (so a file that only diffusers could read, e.g. one still in diffusers
names, fails), and a second write of the re-loaded pipeline must reproduce the first file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors.torch import load_file
from tiny_models import TEXT_WIDTH, TEXT_WIDTH_2

from pipelines.single_file import save_single_file, sd1_original, sd2_original, sdxl_original

# name parts that exist only in diffusers' naming, per section of the original file
_UNET_VAE_DIFFUSERS = {"down_blocks", "up_blocks", "mid_block", "resnets", "attentions", "downsamplers"}
_UNET_VAE_DIFFUSERS |= {"upsamplers", "time_embedding", "add_embedding", "conv_norm_out", "conv_shortcut"}
_UNET_VAE_DIFFUSERS |= {"time_emb_proj"}
_VAE_ATTENTION_DIFFUSERS = {"group_norm", "to_q", "to_k", "to_v", "to_out"}  # the UNet's ldm attention has to_*
_OPENCLIP_DIFFUSERS = {"text_model", "embeddings", "encoder", "layers", "self_attn", "q_proj", "k_proj", "v_proj"}
_OPENCLIP_DIFFUSERS |= {"fc1", "fc2", "layer_norm1", "layer_norm2", "final_layer_norm"}
_SECTIONS = {  # family → {section prefix: name parts it must not contain}
    "sd1": {"cond_stage_model.transformer.text_model.": set()},
    "sd2": {"cond_stage_model.model.": _OPENCLIP_DIFFUSERS},
    "sdxl": {
        "conditioner.embedders.0.transformer.text_model.": set(),
        "conditioner.embedders.1.model.": _OPENCLIP_DIFFUSERS,
    },
}
_SHARED_SECTIONS = {
    "model.diffusion_model.": _UNET_VAE_DIFFUSERS,
    "first_stage_model.": _UNET_VAE_DIFFUSERS | _VAE_ATTENTION_DIFFUSERS,
}
_LAYOUTS = {"sd1": sd1_original, "sd2": sd2_original, "sdxl": sdxl_original}
_PIPELINES = {"sd1": StableDiffusionPipeline, "sd2": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline}


@pytest.fixture()
def folders(tiny_pipeline_dir, tiny_sd2_dir, tiny_sdxl_dir) -> dict[str, Path]:
    return {"sd1": tiny_pipeline_dir, "sd2": tiny_sd2_dir, "sdxl": tiny_sdxl_dir}


def _components(family: str) -> tuple[str, ...]:
    return ("unet", "vae", "text_encoder", "text_encoder_2") if family == "sdxl" else ("unet", "vae", "text_encoder")


def _load_single(family: str, path: Path, folder: Path):
    return _PIPELINES[family].from_single_file(str(path), config=str(folder), local_files_only=True)


def _assert_same_weights(ours, theirs, names) -> None:
    for name in names:
        a, b = getattr(ours, name).state_dict(), getattr(theirs, name).state_dict()
        assert a.keys() == b.keys(), name
        different = [k for k in a if b[k].is_meta or not torch.equal(a[k], b[k])]
        assert not different, f"{name}: {different[:5]}"


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_diffusers_reads_back_every_weight_bit_exact(family, folders, tmp_path):
    pipe = _PIPELINES[family].from_pretrained(folders[family])
    path = save_single_file(pipe, tmp_path / f"{family}.safetensors", layout=_LAYOUTS[family])
    _assert_same_weights(pipe, _load_single(family, path, folders[family]), _components(family))


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_every_key_is_in_an_original_section_and_named_the_original_way(
    family, tiny_pipeline_dir, tiny_sd2_dir, tiny_sdxl_dir
):
    folder = {"sd1": tiny_pipeline_dir, "sd2": tiny_sd2_dir, "sdxl": tiny_sdxl_dir}[family]
    state = _LAYOUTS[family](_PIPELINES[family].from_pretrained(folder))
    sections = _SHARED_SECTIONS | _SECTIONS[family]
    for key in state:
        prefix = next((p for p in sections if key.startswith(p)), None)
        assert prefix is not None, f"{key!r} is in no section of the original {family} layout"
        stray = set(key[len(prefix) :].split(".")) & sections[prefix]
        assert not stray, f"{key!r} keeps the diffusers name(s) {stray}"
    assert all(any(k.startswith(p) for k in state) for p in sections), "a section is empty"


def test_sd2_text_encoder_is_in_openclip_layout_with_qkv_packed_in_order(tiny_sd2_dir):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd2_dir)
    state = sd2_original(pipe)
    encoder = pipe.text_encoder.state_dict()
    encoder = {k.removeprefix("text_model."): v for k, v in encoder.items()}
    block = "cond_stage_model.model.transformer.resblocks.1."
    packed = state[block + "attn.in_proj_weight"]
    assert packed.shape == (3 * TEXT_WIDTH, TEXT_WIDTH)
    for kind in ("weight", "bias"):
        # nn.MultiheadAttention's packing: rows [0, w) are q, [w, 2w) k, [2w, 3w) v
        expected = torch.cat([encoder[f"encoder.layers.1.self_attn.{p}_proj.{kind}"] for p in "qkv"])
        assert torch.equal(state[block + f"attn.in_proj_{kind}"], expected)
    for name in ("token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias"):
        assert "cond_stage_model.model." + name in state
    for part in ("ln_1.weight", "ln_2.bias", "attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.bias"):
        assert block + part in state
    assert not any(k.startswith("cond_stage_model.transformer.") for k in state)
    assert "cond_stage_model.model.text_projection" not in state  # diffusers' SD 2.x encoder holds none


def test_sdxl_has_label_emb_both_embedders_and_the_projection_transposed(tiny_sdxl_dir):
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir)
    state = sdxl_original(pipe)
    unet = pipe.unet.state_dict()
    assert torch.equal(state["model.diffusion_model.label_emb.0.0.weight"], unet["add_embedding.linear_1.weight"])
    assert torch.equal(state["model.diffusion_model.label_emb.0.2.bias"], unet["add_embedding.linear_2.bias"])
    # layers_per_block=2 and two transformer layers at level 1: the deepest down slot is input_blocks.5,
    # and level 0's upsampler sits after its cross-attention in output_blocks.2
    assert "model.diffusion_model.input_blocks.5.1.transformer_blocks.1.attn2.to_k.weight" in state
    assert "model.diffusion_model.output_blocks.2.2.conv.weight" in state
    first = "conditioner.embedders.0.transformer.text_model."
    assert state[first + "embeddings.position_embedding.weight"].shape == (77, TEXT_WIDTH)
    second = "conditioner.embedders.1.model."
    assert state[second + "positional_embedding"].shape == (77, TEXT_WIDTH_2)
    projection = pipe.text_encoder_2.text_projection.weight  # nn.Linear: (projection_dim, width)
    assert torch.equal(state[second + "text_projection"], projection.T)  # OpenCLIP: x @ P, (width, projection_dim)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_write_load_write_reproduces_the_file(family, folders, tmp_path):
    layout = _LAYOUTS[family]
    first = save_single_file(
        _PIPELINES[family].from_pretrained(folders[family]), tmp_path / "first.safetensors", layout=layout
    )
    again = save_single_file(
        _load_single(family, first, folders[family]), tmp_path / "again.safetensors", layout=layout
    )
    a, b = load_file(first), load_file(again)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
