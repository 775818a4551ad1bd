"""x_t from the latent bank: x_0 latents the frozen model drew once per prompt (cached on disk),
noised to a random t in [t_min, t_max] at each step (METHOD.md, "Where x_t comes from")."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from erase.xt_sources.base import Denoiser, Draw
from pipelines.conditioning import Conditioning
from pipelines.latents import generate_latents


class LatentBank:
    def __init__(
        self, pipe, family, prompts: dict[str, list[str]], conditions: dict[str, Conditioning], config, progress: bool
    ):
        settings = dict(
            per_prompt=config.bank_size,
            seed=config.seed,
            steps=config.bank_steps,
            guidance=config.bank_guidance,
            progress=progress,
        )
        self.conditions = conditions
        self.latents = {
            kind: generate_latents(pipe, texts, desc=f"{kind} bank", **settings).to(pipe.device)
            for kind, texts in prompts.items()
            if texts
        }
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.t_min, self.t_max = config.t_min, config.t_max

    def draw(self, kind: str, batch: int, generator: torch.Generator, denoise: Denoiser, weights=None) -> Draw:
        """``weights``: each prompt's probability of being drawn (None: uniform over the bank)."""
        bank = self.latents[kind]
        prompts, per_prompt = bank.shape[:2]
        if weights is None:
            index = torch.randint(0, prompts * per_prompt, (batch,), generator=generator)
        else:
            chosen = torch.multinomial(weights, batch, replacement=True, generator=generator)
            index = chosen * per_prompt + torch.randint(0, per_prompt, (batch,), generator=generator)
        t = torch.randint(self.t_min, self.t_max + 1, (batch,), generator=generator)
        noise = torch.randn((batch, *bank.shape[2:]), generator=generator)
        device = bank.device
        x0 = bank.flatten(0, 1)[index.to(device)]
        t, noise = t.to(device), noise.to(device, x0.dtype)
        x_t = self.noise_scheduler.add_noise(x0, noise, t)
        rows = (index // per_prompt).to(device)
        return Draw(x_t, t, noise, self.conditions[kind][rows], rows)
