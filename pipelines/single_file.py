"""Write a diffusers SD pipeline as one original-layout (CompVis/ldm/sgm) ``.safetensors`` file.

That layout is the one the original CompVis / Stability AI releases use, which other SD tools
read; diffusers' ``from_single_file`` converts it back (the only reader tested here).
The UNet and VAE are shared by every family (``model.diffusion_model.*``, ``first_stage_model.*``);
the text encoders differ:

- SD 1.x: OpenAI CLIP in Hugging Face layout under ``cond_stage_model.transformer.text_model.*``;
- SD 2.x: OpenCLIP ViT-H in OpenCLIP layout under ``cond_stage_model.model.*``;
- SDXL: CLIP in HF layout under ``conditioner.embedders.0.transformer.text_model.*`` and OpenCLIP
  ViT-bigG in OpenCLIP layout under ``conditioner.embedders.1.model.*``.

Pure building blocks (``unet_to_original``, ``vae_to_original``, ``clip_to_original``,
``openclip_to_original``) rename one component's state dict; one layout function per family
(``sd1_original``, ``sd2_original``, ``sdxl_original``) assembles them, and ``save_single_file``
is told which to use by its caller (the family registry), so this module never guesses a family.
The key maps are derived from the UNet/VAE configs rather than hard-coded for SD 1.5's four
levels, so tiny models convert too.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from pipelines.files import atomic_path

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_TEXT_PREFIX = "cond_stage_model.transformer."
SD2_TEXT_PREFIX = "cond_stage_model.model."
SDXL_TEXT_PREFIX = "conditioner.embedders.0.transformer."
SDXL_TEXT_2_PREFIX = "conditioner.embedders.1.model."

_UNET_FIXED = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}
_UNET_RESNET = {
    "norm1.": "in_layers.0.",
    "conv1.": "in_layers.2.",
    "norm2.": "out_layers.0.",
    "conv2.": "out_layers.3.",
    "time_emb_proj.": "emb_layers.1.",
    "conv_shortcut.": "skip_connection.",
}
# SDXL's text-time embedding is ldm's `label_emb` (a Sequential: Linear, SiLU, Linear).
_UNET_ADDED_EMBEDDING = {"add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2."}
_VAE_ATTENTION = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}


def _rename(key: str, prefixes: dict[str, str]) -> tuple[str, str] | None:
    """(new prefix + rest, matched diffusers prefix) for the longest matching prefix."""
    for old in sorted(prefixes, key=len, reverse=True):
        if key.startswith(old):
            return prefixes[old] + key[len(old) :], old
    return None


def unet_key_map(config) -> dict[str, str]:
    """diffusers UNet2DConditionModel prefix → ldm UNetModel prefix, from the config's layout."""
    layers = config.layers_per_block
    if not isinstance(layers, int):
        raise ValueError("per-level layers_per_block is not supported by the single-file writer")
    levels = len(config.block_out_channels)
    prefixes = dict(_UNET_FIXED)
    if config.addition_embed_type == "text_time":
        prefixes.update(_UNET_ADDED_EMBEDDING)
    slot = 1
    for i in range(levels):
        for j in range(layers):
            prefixes[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{slot}.0."
            prefixes[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{slot}.1."
            slot += 1
        if i < levels - 1:
            prefixes[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{slot}.0.op."
            slot += 1
    prefixes["mid_block.resnets.0."] = "middle_block.0."
    prefixes["mid_block.attentions.0."] = "middle_block.1."
    prefixes["mid_block.resnets.1."] = "middle_block.2."
    slot = 0
    for i, block_type in enumerate(config.up_block_types):
        for j in range(layers + 1):
            prefixes[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{slot}.0."
            prefixes[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{slot}.1."
            slot += 1
        if i < levels - 1:  # the upsampler sits after the level's last resnet (and attention)
            position = 2 if block_type.startswith("CrossAttn") else 1
            prefixes[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{slot - 1}.{position}."
    return prefixes


def unet_to_original(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    prefixes = unet_key_map(config)
    out = {}
    for key, tensor in state.items():
        renamed = _rename(key, prefixes)
        if renamed is None:
            raise ValueError(f"UNet key {key!r} has no place in the original layout")
        new, matched = renamed
        if ".resnets." in matched:
            head, rest = new[: len(prefixes[matched])], new[len(prefixes[matched]) :]
            for old, replacement in _UNET_RESNET.items():
                if rest.startswith(old):
                    rest = replacement + rest[len(old) :]
                    break
            new = head + rest
        out[UNET_PREFIX + new] = tensor
    return out


def vae_key_map(config) -> dict[str, str]:
    levels = len(config.block_out_channels)
    prefixes = {}
    for side in ("encoder", "decoder"):
        prefixes[f"{side}.mid_block.resnets.0."] = f"{side}.mid.block_1."
        prefixes[f"{side}.mid_block.resnets.1."] = f"{side}.mid.block_2."
        prefixes[f"{side}.mid_block.attentions.0."] = f"{side}.mid.attn_1."
        prefixes[f"{side}.conv_norm_out."] = f"{side}.norm_out."
    for i in range(levels):
        for j in range(config.layers_per_block + 1):
            prefixes[f"encoder.down_blocks.{i}.resnets.{j}."] = f"encoder.down.{i}.block.{j}."
            prefixes[f"decoder.up_blocks.{i}.resnets.{j}."] = f"decoder.up.{levels - 1 - i}.block.{j}."
        prefixes[f"encoder.down_blocks.{i}.downsamplers.0."] = f"encoder.down.{i}.downsample."
        prefixes[f"decoder.up_blocks.{i}.upsamplers.0."] = f"decoder.up.{levels - 1 - i}.upsample."
    return prefixes


def vae_to_original(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    prefixes = vae_key_map(config)
    out = {}
    for key, tensor in state.items():
        renamed = _rename(key, prefixes)
        new = renamed[0] if renamed else key  # conv_in, conv_out, quant_conv, post_quant_conv keep names
        new = new.replace(".conv_shortcut.", ".nin_shortcut.")
        if ".mid.attn_1." in new:
            head, rest = new.split(".mid.attn_1.")
            for old, replacement in _VAE_ATTENTION.items():
                if rest.startswith(old):
                    rest = replacement + rest[len(old) :]
                    break
            new = f"{head}.mid.attn_1.{rest}"
            if new.endswith(".weight") and tensor.ndim == 2:  # linear → 1×1 conv, as ldm stores them
                tensor = tensor.reshape(*tensor.shape, 1, 1)
        out[VAE_PREFIX + new] = tensor
    return out


_OPENCLIP_FIXED = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",  # a bare Parameter in OpenCLIP
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
_OPENCLIP_BLOCK = {
    "layer_norm1.": "ln_1.",
    "layer_norm2.": "ln_2.",
    "self_attn.out_proj.": "attn.out_proj.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
}
# OpenCLIP uses torch's nn.MultiheadAttention, which holds q, k, v as one matrix in this order.
_PACKED_PROJECTIONS = ("q_proj", "k_proj", "v_proj")
_ENCODER_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)")


def _bare_text_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIP text weights without the ``text_model.`` level.

    transformers 5 dropped that level from ``CLIPTextModel`` but ``CLIPTextModelWithProjection``
    keeps it; stripping it lets both encoders (and both transformers versions) share one path.
    """
    return {key.removeprefix("text_model."): tensor for key, tensor in state.items()}


def clip_to_original(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A ``CLIPTextModel`` in the Hugging Face layout the original SD 1.x / SDXL files embed.

    Those files always name the weights ``{prefix}text_model.*``, whatever transformers version
    made the model, so the level is put back here.
    """
    out = {}
    for key, tensor in _bare_text_keys(state).items():
        if key.startswith("text_projection."):
            raise ValueError(f"{key!r}: the HF-layout text encoder of an original file has no projection")
        out[f"{prefix}text_model.{key}"] = tensor
    return out


def _openclip_block_key(rest: str) -> str:
    """One encoder layer's diffusers name (after ``encoder.layers.{i}.``) → its OpenCLIP name."""
    renamed = _rename(rest, _OPENCLIP_BLOCK)
    if renamed is None:
        raise ValueError(f"text encoder key {rest!r} has no place in the OpenCLIP layout")
    return renamed[0]


def _pack_in_proj(parts: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    """q, k, v stacked along dim 0: (3·width, width) weights or (3·width,) biases."""
    missing = [name for name in _PACKED_PROJECTIONS if name not in parts]
    if missing:
        raise ValueError(f"{key}: the text encoder lacks {', '.join(missing)} to pack")
    return torch.cat([parts[name] for name in _PACKED_PROJECTIONS])


def openclip_to_original(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A transformers CLIP text encoder converted from OpenCLIP, back in OpenCLIP's own layout.

    OpenCLIP names the blocks ``transformer.resblocks.{i}`` and packs q, k, v into one
    ``attn.in_proj_weight``; its ``text_projection`` is a bare matrix applied as ``x @ P``, i.e.
    the transpose of the ``nn.Linear`` weight transformers holds.
    """
    out, packed = {}, {}
    for key, tensor in _bare_text_keys(state).items():
        if key in _OPENCLIP_FIXED:
            out[prefix + _OPENCLIP_FIXED[key]] = tensor
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = tensor.T  # (width, projection_dim)
        elif (layer := _ENCODER_LAYER.fullmatch(key)) is None:
            raise ValueError(f"text encoder key {key!r} has no place in the OpenCLIP layout")
        else:
            index, rest = layer.groups()
            block = f"{prefix}transformer.resblocks.{index}."
            projection, _, kind = rest.removeprefix("self_attn.").partition(".")
            if rest.startswith("self_attn.") and projection in _PACKED_PROJECTIONS:
                packed.setdefault(f"{block}attn.in_proj_{kind}", {})[projection] = tensor
            else:
                out[block + _openclip_block_key(rest)] = tensor
    out.update({key: _pack_in_proj(parts, key) for key, parts in packed.items()})
    return out


def _unet_and_vae(pipe) -> dict[str, torch.Tensor]:
    """The part every family shares: ldm names the UNet and VAE the same in SD 1.x, 2.x and XL."""
    state = unet_to_original(pipe.unet.state_dict(), pipe.unet.config)
    state.update(vae_to_original(pipe.vae.state_dict(), pipe.vae.config))
    return state


def _for_writing(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors wants contiguous CPU tensors that share no autograd graph."""
    return {key: tensor.detach().contiguous().cpu() for key, tensor in state.items()}


def sd1_original(pipe) -> dict[str, torch.Tensor]:
    """An SD 1.x pipeline in the original layout: its CLIP encoder stays in HF layout."""
    state = _unet_and_vae(pipe)
    state.update(clip_to_original(pipe.text_encoder.state_dict(), SD1_TEXT_PREFIX))
    return _for_writing(state)


def sd2_original(pipe) -> dict[str, torch.Tensor]:
    """An SD 2.x pipeline in the original layout: its text encoder goes back to OpenCLIP layout.

    A real SD 2.x file holds two things diffusers' ``CLIPTextModel`` does not, so they cannot be
    written: the 24th (last) resblock, dropped at conversion because SD 2.x conditions on the
    penultimate layer, and ``text_projection``, which SD 2.x never uses. diffusers' own
    converter ignores both keys; a reader that builds OpenCLIP's full model will find them
    missing, but should never run them (not tried here).
    """
    state = _unet_and_vae(pipe)
    state.update(openclip_to_original(pipe.text_encoder.state_dict(), SD2_TEXT_PREFIX))
    return _for_writing(state)


def sdxl_original(pipe) -> dict[str, torch.Tensor]:
    """An SDXL pipeline in the original (sgm) layout: CLIP ViT-L in HF layout as embedder 0,
    OpenCLIP ViT-bigG, with its projection, in OpenCLIP layout as embedder 1."""
    state = _unet_and_vae(pipe)
    state.update(clip_to_original(pipe.text_encoder.state_dict(), SDXL_TEXT_PREFIX))
    state.update(openclip_to_original(pipe.text_encoder_2.state_dict(), SDXL_TEXT_2_PREFIX))
    return _for_writing(state)


Layout = Callable[[object], dict[str, torch.Tensor]]


def save_single_file(
    pipe, target: str | Path, metadata: dict[str, str] | None = None, layout: Layout = sd1_original
) -> Path:
    """Write ``pipe`` as one ``.safetensors`` file (atomically) in ``layout``'s original layout.

    The caller picks ``layout`` (``sd1_original``, ``sd2_original``, ``sdxl_original``) from the
    model family it already knows; the default keeps SD 1.x callers unchanged.
    """
    target = Path(target)
    with atomic_path(target) as tmp:
        save_file(layout(pipe), str(tmp), metadata=metadata)
    return target
