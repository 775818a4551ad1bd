"""What an x_t source hands the training step: noised latents, their timesteps and conditioning."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler

from pipelines.conditioning import Conditioning
from prompts import InputError

# (x_t, t, conditioning) → the trainable model's raw output; the sample-to-t source samples with it
Denoiser = Callable[[torch.Tensor, torch.Tensor, Conditioning], torch.Tensor]


@dataclass
class Draw:
    """One batch: x_t (B, C, h, w) at timesteps t (B,), the noise added (None when x_t was reached
    by sampling), the rows' conditioning and which prompt each row is.

    ``frozen`` and ``frozen_null``, when a source has them (``trajectory``): the frozen model's raw
    output at (x_t, t) under the rows' conditioning and under ∅, recorded when the source drew
    x_t, so the step need not run the frozen model for them."""

    x_t: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor | None
    cond: Conditioning
    rows: torch.Tensor
    frozen: torch.Tensor | None = None
    frozen_null: torch.Tensor | None = None

    def __getitem__(self, part: torch.Tensor) -> Draw:
        """The rows in ``part`` (for micro-batches)."""

        def pick(value):
            return None if value is None else value[part]

        parts = (self.x_t, self.t, self.noise, self.cond, self.rows, self.frozen, self.frozen_null)
        return Draw(*(pick(tensor) for tensor in parts))


def ddim_in_range(pipe, config) -> tuple[DDIMScheduler, list[int]]:
    """DDIM over ``--bank-steps`` from the pipeline's scheduler config (whatever scheduler the
    model ships with), and the indices of its timesteps in [t_min, t_max]: where a source that
    samples may stop (refused when there are none)."""
    sampler = DDIMScheduler.from_config(pipe.scheduler.config)
    sampler.set_timesteps(config.bank_steps)
    times = sampler.timesteps.tolist()
    stops = [k for k, t in enumerate(times) if config.t_min <= t <= config.t_max]
    if not stops:
        raise InputError(
            f"no sampler timestep of --bank-steps {config.bank_steps} lies in --t-min..--t-max "
            f"({config.t_min}..{config.t_max}); widen the range or use more steps"
        )
    return sampler, stops


def guided(uncond: torch.Tensor, text: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guidance, as diffusers' pipelines mix it: ∅ + g·(prompt − ∅), and the
    prompt's prediction alone for g ≤ 1 (they do not guide at all then, and so the bank)."""
    return text if guidance <= 1 else uncond + guidance * (text - uncond)
