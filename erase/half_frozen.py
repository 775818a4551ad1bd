"""`--half-frozen`: the weights a run does not train, held in the mixed-precision dtype.

Under bf16/fp16 autocast every matrix product already runs in half precision, yet a UNet loaded
in fp32 keeps 4 bytes per weight on the accelerator and casts them on every forward. Holding the
untrained tensors (and the trained tensors' originals, which give the frozen predictions) in
half precision halves that memory. Norms, which autocast computes in fp32, then see rounded
weights, so a run is close to, not bit-identical with, one without the lever.

The saved model must not inherit the rounding: before the run's tensors are cast, their fp32
values are copied to host memory, and ``restore`` puts them back before anything is written
(LoRA merges its adapters into the restored fp32 weights).
"""

from __future__ import annotations

import torch
from torch import nn

HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


class HalfFrozen:
    """Casts a run's untrained UNet tensors to half precision at setup and keeps their fp32
    values in host memory, so ``restore`` can hand the saved model its exact weights."""

    def __init__(self, unet: nn.Module, frozen, precision: str):
        dtype = HALF[precision]
        self.host_copies: dict[str, torch.Tensor] = {}
        for name, param in unet.named_parameters():
            if param.requires_grad or not param.is_floating_point() or param.dtype == dtype:
                continue
            self.host_copies[name] = param.detach().to("cpu", copy=True)
            param.data = param.data.to(dtype)
        frozen.hold_in(dtype)

    def restore(self, unet: nn.Module) -> None:
        """The untrained tensors' own values again, in their own dtype, on their device."""
        params = dict(unet.named_parameters())
        for name, value in self.host_copies.items():
            params[name].data = value.to(params[name].device)
        self.host_copies = {}
