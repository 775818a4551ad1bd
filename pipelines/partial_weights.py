"""Other tools' erased weights: a UNet-only or partial state dict, or a text encoder, put onto a base.

ESD, UCE, RECE, SalUn, AdvUnlearn and the seed paper's code release what they changed, not a
pipeline: a ``torch.save`` of the UNet's state dict in diffusers keys (``down_blocks.0...``) or
in the original CompVis keys (``model.diffusion_model.input_blocks...``), sometimes only the
cross-attention tensors, sometimes as safetensors; AdvUnlearn releases an erased text encoder.
None of them carries metadata saying what it is, so the format is recognised from the keys,
against the base's own tensors:

- a layout is a way of naming one component's tensors (``LAYOUTS``, one small function each,
  giving file key → the component's own key for *this* base);
- every key of the file must be named by a layout, with the base's shape, as a floating-point
  tensor with finite values; otherwise nothing is applied and the first misfit is named;
- the result says which layout(s) it recognised and how much of each component it replaces.

Pickled files are read only with ``allow_pickle``, and then with ``weights_only=True``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipelines.loading import PICKLE_SUFFIXES, ModelLoadError
from pipelines.single_file import SD1_TEXT_PREFIX, VAE_PREFIX, unet_to_original

# Entries some trainers save beside the weights; bookkeeping, not weights of the model: EMA
# counters, and the position-id buffer older transformers wrote into text-encoder state dicts.
IGNORED_PREFIXES = ("model_ema.",)
IGNORED_SUFFIXES = ("embeddings.position_ids",)
WHOLE_MODEL_PREFIXES = (VAE_PREFIX, "vae.", "decoder.", "encoder.down")  # a VAE inside: a whole model


def read_state_dict(path: str | Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file or (``allow_pickle``) a torch pickle, unwrapped from the
    usual containers (``{"state_dict": ...}``, ``{"model": ...}``, a ``module.`` prefix)."""
    path = Path(path)
    if is_component_folder(path):  # a transformers save_pretrained folder (AdvUnlearn's text encoder)
        found = [path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()]
        if not found:
            raise ModelLoadError(f"{path} has a config.json but no model.safetensors (or pytorch_model.bin)")
        path = found[0]
    if not path.is_file():
        raise ModelLoadError(f"{path} is not a file; give a .safetensors (or, with --allow-pickle, .pt) state dict")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise ModelLoadError(
                f"{path} is a pickle, which can run code when loaded; convert it to .safetensors, or pass "
                "--allow-pickle if you trust it (it is then read with weights_only=True)"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch raises many types for a damaged or hostile file
            raise ModelLoadError(f"cannot read {path} as weights ({str(err).splitlines()[0][:160]})") from None
        for wrapper in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
                state = state[wrapper]
    else:
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as err:  # noqa: BLE001 - safetensors has its own error types
            raise ModelLoadError(f"{path} is not a readable safetensors file ({str(err).splitlines()[0]})") from None
    if not isinstance(state, dict) or not state:
        raise ModelLoadError(f"{path} holds no tensors")
    if all(k.startswith("module.") for k in state):  # saved from a DataParallel/DDP wrapper
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def is_component_folder(path: Path) -> bool:
    """One model saved alone by transformers/diffusers (config.json + weights), not a pipeline."""
    return path.is_dir() and (path / "config.json").is_file() and not (path / "model_index.json").exists()


def is_whole_model(keys) -> bool:
    """A whole single-file checkpoint carries its VAE; the field's partial releases do not."""
    return any(k.startswith(WHOLE_MODEL_PREFIXES) for k in keys)


@dataclass(frozen=True)
class Layout:
    name: str
    component: str
    key_map: Callable[[torch.nn.Module], dict[str, str]]  # file key -> the component's key


def _diffusers_unet(unet) -> dict[str, str]:
    return {k: k for k in unet.state_dict()}


def _compvis_unet(unet) -> dict[str, str]:
    """The original layout's names for this base's UNet: the single-file writer's own renaming,
    read backwards (it renames key by key, in order)."""
    state = unet.state_dict()
    return dict(zip(unet_to_original(state, unet.config), state, strict=True))


def _hf_text_encoder(encoder) -> dict[str, str]:
    """transformers' names with or without the ``text_model.`` level (versions differ), bare or
    under SD 1.x's original prefix."""
    out = {}
    for key in encoder.state_dict():
        bare = key.removeprefix("text_model.")
        for name in (bare, f"text_model.{bare}"):
            out[name] = key
            out[SD1_TEXT_PREFIX + name] = key
    return out


LAYOUTS = (
    Layout("diffusers UNet keys", "unet", _diffusers_unet),
    Layout("CompVis UNet keys (model.diffusion_model.*)", "unet", _compvis_unet),
    Layout("text encoder (transformers CLIPTextModel keys)", "text_encoder", _hf_text_encoder),
)


@dataclass
class PartialWeights:
    """What a file replaces: component → {the component's key: tensor}, and how it was read."""

    source: str
    tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    layouts: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)  # tensors each component has in all

    def describe(self) -> str:
        parts = []
        for component, tensors in self.tensors.items():
            whole = "all" if len(tensors) == self.sizes[component] else "partial:"
            parts.append(f"{component} {whole} {len(tensors)} of {self.sizes[component]} tensors")
        return f"{self.source}: recognised {' + '.join(self.layouts)}; replaces {', '.join(parts)}"

    def apply(self, pipe) -> None:
        for component, tensors in self.tensors.items():
            module = getattr(pipe, component)
            own = module.state_dict()
            module.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()}, strict=False)


def recognise(state: dict[str, torch.Tensor], pipe, source: str) -> PartialWeights:
    """Name every tensor of ``state`` in the base ``pipe``'s terms, or refuse naming the first
    that does not fit (unknown key, other shape, not floating point, NaN/inf)."""
    maps, owns = {}, {}
    for layout in LAYOUTS:
        module = getattr(pipe, layout.component, None)
        if module is None:
            continue
        try:
            maps[layout] = layout.key_map(module)
        except ValueError:  # a UNet the original layout cannot name (per-level layers): no such file exists
            continue
        owns.setdefault(layout.component, module.state_dict())
    result = PartialWeights(source)
    skipped = 0
    for key, tensor in state.items():
        if key.startswith(IGNORED_PREFIXES) or key.endswith(IGNORED_SUFFIXES):
            skipped += 1
            continue
        layout = next((lay for lay, names in maps.items() if key in names), None)
        if layout is None:
            raise ModelLoadError(
                f"{source}: tensor {key!r} is not a UNet or text-encoder tensor of this base (in diffusers or "
                "CompVis names); was it made for another architecture? A whole checkpoint (with its VAE) is "
                "given as --model instead"
            )
        own_key = maps[layout][key]
        own = owns[layout.component][own_key]
        if tuple(tensor.shape) != tuple(own.shape):
            raise ModelLoadError(
                f"{source}: tensor {key!r} has shape {tuple(tensor.shape)}, the base's has {tuple(own.shape)}; "
                "it was made for another architecture"
            )
        if not tensor.is_floating_point():
            raise ModelLoadError(f"{source}: tensor {key!r} is {tensor.dtype}, not floating point")
        if not torch.isfinite(tensor).all():
            raise ModelLoadError(f"{source}: tensor {key!r} has NaN or inf values; the file is damaged")
        result.tensors.setdefault(layout.component, {})[own_key] = tensor
        if layout.name not in result.layouts:
            result.layouts.append(layout.name)
    if not result.tensors:
        raise ModelLoadError(f"{source}: no model tensors in it ({skipped} bookkeeping entries only)")
    for component in result.tensors:
        result.sizes[component] = len(owns[component])
    return result


def load_partial(path: str | Path, pipe, allow_pickle: bool = False) -> PartialWeights:
    """Read ``path`` and recognise it against ``pipe``; refuses a whole checkpoint (give it as
    --model) and anything that does not fit."""
    state = read_state_dict(path, allow_pickle)
    if is_whole_model(state):
        raise ModelLoadError(f"{path} is a whole checkpoint (it has a VAE); give it as --model, not on a --base")
    return recognise(state, pipe, str(path))
