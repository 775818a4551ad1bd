"""x_t as ESD draws it: DDIM-sample with the model being trained, from pure noise down to a
random sampler step whose timestep lies in [t_min, t_max]. Slow (up to bank_steps UNet calls a
step) but x_t always comes from the current model."""

from __future__ import annotations

import torch

from erase.xt_sources.base import Denoiser, Draw, ddim_in_range, guided
from pipelines.conditioning import Conditioning


class SampleToT:
    def __init__(
        self, pipe, family, prompts: dict[str, list[str]], conditions: dict[str, Conditioning], config, progress: bool
    ):
        self.conditions = conditions
        self.guidance = config.bank_guidance
        self.sampler, self.stops = ddim_in_range(pipe, config)
        self.null = family.encode(pipe, [""])  # the family's own unconditional input
        self.channels = pipe.unet.config.in_channels
        self.latent_size = family.latent_size(pipe)

    @torch.no_grad()
    def draw(self, kind: str, batch: int, generator: torch.Generator, denoise: Denoiser, weights=None) -> Draw:
        """Every row shares the drawn t; guidance as the bank's (unconditional + g·(cond − uncond),
        and the conditional prediction alone for g ≤ 1, as diffusers' pipelines do).
        ``weights``: each prompt's probability of being drawn (None: uniform)."""
        conditions = self.conditions[kind]
        device = conditions.device
        timesteps = self.sampler.timesteps
        stop = self.stops[int(torch.randint(0, len(self.stops), (1,), generator=generator))]
        if weights is None:
            rows = torch.randint(0, len(conditions), (batch,), generator=generator).to(device)
        else:
            rows = torch.multinomial(weights, batch, replacement=True, generator=generator).to(device)
        shape = (batch, self.channels, *self.latent_size)
        latents = (torch.randn(shape, generator=generator) * self.sampler.init_noise_sigma).to(device)
        cond = conditions[rows]
        both = Conditioning.cat([self.null.expand(batch), cond])
        for t in timesteps[:stop]:
            if self.guidance <= 1:  # unguided (see `guided`): the ∅ half would not be used, so it is not run
                prediction = denoise(latents, t, cond).float()
            else:
                uncond, text = denoise(torch.cat([latents] * 2), t, both).float().chunk(2)
                prediction = guided(uncond, text, self.guidance)
            latents = self.sampler.step(prediction, t, latents).prev_sample
        t = timesteps[stop].to(device).expand(batch)
        return Draw(latents, t, None, cond, rows)
