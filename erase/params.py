"""Which UNet parameters an erasure run trains (ESD's `train_method`), as a registry of filters."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

import torch
from torch import nn

# name -> predicate on a UNet parameter name
PARAMETER_SETS: dict[str, Callable[[str], bool]] = {
    # cross-attention only: what ties text to image; ESD's choice for specific concepts and styles
    "xattn": lambda name: ".attn2." in name,
    # everything but cross-attention and the time/output layers: ESD's choice for global concepts
    "noxattn": lambda name: (
        ".attn2." not in name and not name.startswith(("time_embedding.", "conv_out.", "conv_norm_out."))
    ),
    "full": lambda name: True,
}


def select_parameters(unet: nn.Module, parameter_set: str) -> list[tuple[str, nn.Parameter]]:
    """Mark the chosen parameters trainable (and every other one frozen); return them by name."""
    if parameter_set not in PARAMETER_SETS:
        raise KeyError(f"unknown parameter set {parameter_set!r}; choose one of {', '.join(PARAMETER_SETS)}")
    keep = PARAMETER_SETS[parameter_set]
    chosen = []
    for name, param in unet.named_parameters():
        param.requires_grad_(keep(name))
        if keep(name):
            chosen.append((name, param))
    if not chosen:
        raise ValueError(f"parameter set {parameter_set!r} selects no parameter of this UNet")
    return chosen


def tensors_fingerprint(state: dict[str, torch.Tensor], names: Iterable[str]) -> str:
    """A short hash of the named tensors' values (float32 bytes, in name order).

    A run records it for the base model's values of the tensors it trains; a delta carries it, so
    ``erase apply`` can tell the base the delta was made from from any other base."""
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(name.encode())
        digest.update(state[name].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
