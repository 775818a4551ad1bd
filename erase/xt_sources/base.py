"""What an x_t source hands the training step: noised latents, their timesteps and conditioning."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from pipelines.conditioning import Conditioning

# (x_t, t, conditioning) → the trainable model's raw output; the sample-to-t source samples with it
Denoiser = Callable[[torch.Tensor, torch.Tensor, Conditioning], torch.Tensor]


@dataclass
class Draw:
    """One batch: x_t (B, C, h, w) at timesteps t (B,), the noise added (None when x_t was reached
    by sampling), the rows' conditioning and which prompt each row is."""

    x_t: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor | None
    cond: Conditioning
    rows: torch.Tensor

    def __getitem__(self, part: torch.Tensor) -> Draw:
        """The rows in ``part`` (for micro-batches)."""
        noise = None if self.noise is None else self.noise[part]
        return Draw(self.x_t[part], self.t[part], noise, self.cond[part], self.rows[part])
