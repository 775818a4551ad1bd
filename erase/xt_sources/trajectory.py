"""x_t on the frozen model's own sampling paths, kept with what the frozen model predicted there
(``--x-source trajectory``): a step then runs no frozen forward.

With the bank, a step runs the frozen UNet three times besides the trainable one's two forwards
and backward: on the forget batch under its prompt and under ∅ (the negative-guidance target),
and on the retain batch under its prompt (the retain target). Sampling an image with guidance
evaluates the frozen UNet on x_t under the prompt and under ∅ at every sampler step, which are
the same predictions. This source DDIM-samples ``--bank-size`` paths per prompt once, at setup,
with the frozen model, and keeps x_t and both predictions at every sampler step whose timestep
lies in [t_min, t_max]; a draw picks such points, and the step reads its frozen targets from them
(``Draw.frozen``, ``Draw.frozen_null``).

What it changes: x_t comes from a finite set (prompts × bank_size × the in-range sampler steps) at
the sampler's timesteps, where the bank noises its x_0 afresh at any t in the range every step.
Setup costs what drawing the bank costs; the points live in host memory (x_t in float32, the
predictions in the dtype the UNet gave them: for SD 1.5 at bf16, 20 steps and 41 prompts × 8
latents, about 0.8 GB), and on disk beside the latent bank (``$ERASE_CACHE_DIR/paths``), so a later
run with the same model, prompts and settings reads them instead of sampling: an erase after the
first on the same retain list samples only its concept's paths. The drawing is seeded per latent,
so a resumed run gets the same points on the CPU (on a GPU, to within float tolerance, as
everything there). SDXL at 1024 px holds about 4× as much per point as SD 1.5, and each process
of ``accelerate launch`` its own copy. A forget prompt with its
own anchor prompt still needs the frozen model for the anchor's prediction.

The paths are DDIM's (``--bank-steps`` steps, ``--bank-guidance``), whatever scheduler the model
ships with; the bank samples with the model's own scheduler.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from erase.xt_sources.base import Denoiser, Draw, ddim_in_range, guided
from pipelines.conditioning import Conditioning
from pipelines.latents import cache_dir, halving_on_out_of_memory, read_cached, sampling_key, write_cached
from pipelines.progress import progress as progress_bar
from prompts import InputError

SAMPLE_BATCH = 32  # latents sampled together (halved when the accelerator runs out of memory)
HOST_SHARE = 0.8  # the largest share of the host's available memory the points may take


def available_host_memory() -> int | None:
    """Bytes the host can still give (Linux's MemAvailable); None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_host_memory(needed: int) -> None:
    """Refuse, before minutes of sampling, points that would not fit in host memory (a run of
    1,000 sampler steps on SD 1.5 would want about 40 GB)."""
    available = available_host_memory()
    if available is not None and needed > HOST_SHARE * available:
        raise InputError(
            f"--x-source trajectory would hold {_size(needed)} of points in host memory, more than "
            f"{HOST_SHARE:.0%} of the {_size(available)} available; lower --bank-steps or --bank-size, "
            "narrow --t-min..--t-max, or use --x-source bank"
        )


def _size(count: int) -> str:
    return f"{count / 2**30:.1f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


class FrozenTrajectories:
    def __init__(
        self, pipe, family, prompts: dict[str, list[str]], conditions: dict[str, Conditioning], config, progress: bool
    ):
        self.conditions = conditions
        self.guidance = config.bank_guidance
        self.sampler, self.stops = ddim_in_range(pipe, config)
        self.stop_times = self.sampler.timesteps[self.stops].long()
        # The family's own unconditional input, encoded as the loop encodes its ∅ (outside the
        # run's autocast, which this source is built under): the recorded ∅ predictions are its targets.
        with torch.autocast(pipe.device.type, enabled=False):
            self.null = family.encode(pipe, [""])
        self.shape = (pipe.unet.config.in_channels, *family.latent_size(pipe))
        points = sum(len(texts) for texts in prompts.values()) * config.bank_size * len(self.stops)
        check_host_memory(points * self._point_bytes(pipe))
        self.paths = {
            kind: self._cached_or_recorded(pipe, texts, conditions[kind], config, f"{kind} paths", progress)
            for kind, texts in prompts.items()
            if texts
        }

    def _cached_or_recorded(self, pipe, texts: list[str], conditions: Conditioning, config, desc: str, progress: bool):
        """The points of ``texts``' paths from the disk cache, as the bank's latents are (keyed by
        the model, the prompts and every setting they depend on), else recorded and cached: an
        erase after the first on the same model and retain list then samples only its concept's
        paths. The ∅ input is the model's own, so the model's key covers it."""
        key = sampling_key(
            pipe,
            source="trajectory",
            prompts=texts,
            k=config.bank_size,
            seed=config.seed,
            steps=config.bank_steps,
            guidance=config.bank_guidance,
            stops=self.stop_times.tolist(),
            shape=list(self.shape),
        )
        path = cache_dir() / "paths" / f"{key}.safetensors"
        shape = (len(texts), config.bank_size, len(self.stops), *self.shape)

        def fits(tensors: dict) -> bool:
            return set(tensors) == {"x_t", "text", "null"} and all(t.shape == shape for t in tensors.values())

        if path.is_file() and (cached := read_cached(path, "trajectory points", fits)) is not None:
            return cached
        points = self._record(pipe.unet, conditions, config.bank_size, config.seed, desc, progress)
        write_cached(path, "trajectory points", points)
        return points

    def _point_bytes(self, pipe) -> int:
        """Host bytes per point: x_t in float32, two predictions in the dtype the UNet returns
        (the autocast dtype under mixed precision)."""
        device = pipe.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else pipe.unet.dtype
        return math.prod(self.shape) * (4 + 2 * dtype.itemsize)

    @torch.no_grad()
    def _record(self, unet, conditions: Conditioning, per_prompt: int, seed: int, desc: str, progress: bool) -> dict:
        """{"x_t", "text", "null"}: each (P, K, S, C, h, w) on the CPU, for P prompts, K paths each
        and the S in-range sampler steps. Path k of prompt p starts from its own generator
        (seed + 1000·p + k, as the bank's latents do), so the points do not depend on the batch."""
        jobs = [(p, k) for p in range(len(conditions)) for k in range(per_prompt)]
        device = conditions.device
        last = self.stops[-1]
        keep = set(self.stops)

        @halving_on_out_of_memory(SAMPLE_BATCH, "the frozen trajectory")
        def sample(batch: int) -> dict[str, torch.Tensor]:
            out = {}  # filled in place chunk by chunk: joining chunks at the end held everything twice
            bar = progress_bar(len(jobs), desc, unit="path", enabled=progress)
            for first in range(0, len(jobs), batch):
                chunk = jobs[first : first + batch]
                seeds = [torch.Generator().manual_seed(seed + 1000 * p + k) for p, k in chunk]
                noise = torch.stack([torch.randn(self.shape, generator=g) for g in seeds])
                latents = (noise * self.sampler.init_noise_sigma).to(device)
                rows = torch.tensor([p for p, _ in chunk], device=device)
                both = Conditioning.cat([self.null.expand(len(chunk)), conditions[rows]])
                kept = {"x_t": [], "text": [], "null": []}
                for index, t in enumerate(self.sampler.timesteps[: last + 1]):
                    null, text = unet(torch.cat([latents] * 2), t, **both.unet_kwargs()).sample.chunk(2)
                    if index in keep:
                        for name, value in (("x_t", latents), ("text", text), ("null", null)):
                            kept[name].append(value.cpu())
                    if index < last:
                        step = guided(null.float(), text.float(), self.guidance)
                        latents = self.sampler.step(step, t, latents).prev_sample
                for name, values in kept.items():
                    block = torch.stack(values, dim=1)
                    if name not in out:
                        out[name] = torch.empty((len(jobs), *block.shape[1:]), dtype=block.dtype)
                    out[name][first : first + len(chunk)] = block
                bar.update(len(chunk))
            bar.close()
            return out

        shape = (len(conditions), per_prompt, len(self.stops), *self.shape)
        return {name: tensor.view(shape) for name, tensor in sample().items()}

    def draw(self, kind: str, batch: int, generator: torch.Generator, denoise: Denoiser, weights=None) -> Draw:
        """Points drawn uniformly over the kind's paths and steps (``weights``: each prompt's
        probability of being drawn; its path and step then uniformly). ``denoise`` is not called:
        the points were drawn with the frozen model at setup."""
        path = self.paths[kind]
        prompts, per_prompt, stops = path["x_t"].shape[:3]
        per = per_prompt * stops
        if weights is None:
            index = torch.randint(0, prompts * per, (batch,), generator=generator)
        else:
            chosen = torch.multinomial(weights, batch, replacement=True, generator=generator)
            index = chosen * per + torch.randint(0, per, (batch,), generator=generator)
        device = self.conditions[kind].device
        x_t, text, null = (path[name].flatten(0, 2)[index].to(device) for name in ("x_t", "text", "null"))
        rows = (index // per).to(device)
        t = self.stop_times[index % stops].to(device)
        return Draw(x_t, t, None, self.conditions[kind][rows], rows, frozen=text, frozen_null=null)
