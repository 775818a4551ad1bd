"""Write a diffusers SD pipeline as one original-layout (CompVis/ldm) ``.safetensors`` file.

That layout (``model.diffusion_model.*``, ``first_stage_model.*``,
``cond_stage_model.transformer.*``) is what other Stable Diffusion tools read and what
``StableDiffusionPipeline.from_single_file`` converts back. The key map is derived from the
UNet/VAE configs rather than hard-coded for SD 1.5's four levels, so tiny models convert too.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from pipelines.files import atomic_path

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."

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


def pipeline_to_original(pipe) -> dict[str, torch.Tensor]:
    """The whole pipeline's weights in the original single-file layout."""
    state = {}
    state.update(unet_to_original(pipe.unet.state_dict(), pipe.unet.config))
    state.update(vae_to_original(pipe.vae.state_dict(), pipe.vae.config))
    for key, tensor in pipe.text_encoder.state_dict().items():
        # transformers 5 drops the `text_model.` level from CLIPTextModel's keys; the file keeps it.
        key = key if key.startswith("text_model.") else "text_model." + key
        state[TEXT_PREFIX + key] = tensor
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_single_file(pipe, target: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write ``pipe`` as one ``.safetensors`` file (atomically)."""
    target = Path(target)
    with atomic_path(target) as tmp:
        save_file(pipeline_to_original(pipe), str(tmp), metadata=metadata)
    return target
