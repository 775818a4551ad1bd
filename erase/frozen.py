"""The frozen model's predictions without a second UNet.

ESD-style code keeps ``deepcopy(unet)`` as the frozen original: a second full UNet in memory
(+1.7 GB for SD 1.5 in bf16, +5 GB for SDXL) although only the trained tensors ever change. Here
the trainable UNet itself gives the frozen predictions: the original values of the trained
tensors are kept (a copy of those tensors only), and a frozen forward runs the same module with
them swapped in (``torch.func.functional_call``), in eval mode, without grad. The arithmetic is
the same as the copy's, so a run is bit-identical to one with a deep copy (tests/test_frozen.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from erase.xt_sources.base import Draw
from pipelines.conditioning import Conditioning


@contextmanager
def eval_mode(module: nn.Module):
    """Eval mode for one call (dropout off, as a frozen copy in eval mode has it), then back."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


class FrozenOriginal:
    """Callable like the UNet (``frozen(x_t, t, **kwargs).sample``); returns the base model's
    output whatever the trainable tensors hold now.

    ``unet`` is the module being trained (unwrapped: not the DDP wrapper); ``names`` the trained
    parameters' names. Their values at construction are the originals."""

    def __init__(self, unet: nn.Module, names: Iterable[str]):
        names = set(names)
        self.unet = unet
        self.originals = {n: p.detach().clone() for n, p in unet.named_parameters() if n in names}
        missing = names - set(self.originals)
        if missing:
            raise KeyError(f"not parameters of this UNet: {sorted(missing)[:3]}")

    def __call__(self, *args, **kwargs):
        with torch.no_grad(), eval_mode(self.unet):
            return functional_call(self.unet, self.originals, args, kwargs, strict=False)

    def hold_in(self, dtype: torch.dtype) -> None:
        """Keep the originals in ``dtype`` (--half-frozen): autocast casts them to it anyway."""
        self.originals = {n: t.to(dtype) for n, t in self.originals.items()}

    def nbytes(self) -> int:
        """Memory the originals take (what replaces a second UNet)."""
        return sum(t.numel() * t.element_size() for t in self.originals.values())


@dataclass
class FrozenRequest:
    """One frozen prediction a step needs: on ``draw``'s x_t and t, under ``cond`` (None: the
    draw's own conditioning). ``recorded``: the prediction the x_t source kept with the draw, read
    instead of running the UNet (``--x-source trajectory``)."""

    draw: Draw
    cond: Conditioning | None = None
    recorded: torch.Tensor | None = None

    def conditioning(self) -> Conditioning:
        return self.draw.cond if self.cond is None else self.cond
