"""Which UNet parameters an erasure run trains (ESD's `train_method`), as a registry of filters."""

from __future__ import annotations

from collections.abc import Callable

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
