"""Latents and prompt embeddings from a frozen pipeline, for training.

The latent bank holds x_0 latents that the frozen model generated once for each forget and
retain prompt (METHOD.md: "Where x_t comes from"); a training step then only noises them. Banks
are cached on disk, keyed by the model's files, the prompts and the sampler settings, so a second
run with the same inputs starts at once.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from accelerate.utils import find_executable_batch_size
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pipelines.files import as_os_error, atomic_path
from pipelines.processes import process_state
from pipelines.progress import progress as progress_bar


def cache_dir() -> Path:
    return Path(os.environ.get("ERASE_CACHE_DIR", Path.home() / ".cache" / "concept-erase"))


def model_fingerprint(pipe) -> str:
    """Identifies the weights a pipeline was loaded from (file names, sizes and mtimes)."""
    origin = getattr(pipe, "name_or_path", None) or pipe.config.get("_name_or_path", "")
    path = Path(str(origin))
    parts = [str(path)]
    if origin and path.exists():
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        parts += [
            f"{f.relative_to(path) if path.is_dir() else f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}"
            for f in files
            if f.is_file()
        ]
    else:  # built in memory (from a single file, or by a caller): a summary of every weight
        parts += _weights_summary(pipe)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _weights_summary(pipe) -> list[str]:
    """Per tensor of the UNet and the text encoders (what the bank's latents depend on): its
    name, shape, sum and sum of squares. A few tensors were not enough: an erased model (ESD-x
    changes only cross-attention) would have shared its base model's bank."""
    parts = []
    for name, part in pipe.components.items():
        if name == "unet" or name.startswith("text_encoder"):
            for key, tensor in sorted(part.state_dict().items()) if part is not None else []:
                values = tensor.detach().float()  # on its device (no float64 on MPS); milliseconds on a GPU
                parts.append(
                    f"{name}.{key}:{tuple(values.shape)}:{values.sum().item():.12e}:{values.square().sum().item():.12e}"
                )
    return parts


def read_cached(path: Path, what: str, fits) -> dict[str, torch.Tensor] | None:
    """The tensors of a cached sampling result, or None, and the caller samples it again.

    A damaged entry (cut by a full disk, changed by hand: safetensors cannot parse it, or its
    shapes or values do not fit) is deleted with a note and rebuilt, instead of breaking every
    later run with these settings. A file that could not be *read* (an I/O error on a network
    disk) may be whole, and may be another user's on a shared ``ERASE_CACHE_DIR``: it is left
    alone, with a note. Anything else (out of host memory loading it) is this run's problem, not
    the file's, and propagates. ``fits(tensors)`` says whether the shapes are the ones asked for."""
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as err:
        if (os_error := as_os_error(err)) is not None:
            reason = os_error.strerror or type(err).__name__
            print(f"note: could not read the cached {what} {path} ({reason}); sampling it again", file=sys.stderr)
            return None
        problem = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
    else:
        if fits(tensors) and all(bool(torch.isfinite(t).all()) for t in tensors.values()):
            return tensors
        problem = f"shapes {[tuple(t.shape) for t in tensors.values()]} or values do not fit"
    print(f"note: the cached {what} {path} is damaged ({problem}); rebuilding it", file=sys.stderr)
    path.unlink(missing_ok=True)
    return None


def write_cached(path: Path, what: str, tensors: dict[str, torch.Tensor]) -> None:
    """Keep a sampling result for later runs. Only each machine's first process writes it (every
    process drew the same tensors, and N copies of an SDXL trajectory would need N times its
    gigabytes at once). The cache is a saving, not an output: when it cannot be written (a full
    disk, a read-only folder) this run goes on with the tensors it holds, and a note says where."""
    if not process_state().is_local_main_process:
        return
    try:
        with atomic_path(path) as tmp:
            save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(tmp))
    except (OSError, SafetensorError) as err:
        if (os_error := as_os_error(err)) is None:
            raise
        reason = os_error.strerror or str(os_error)
        print(
            f"note: could not cache the {what} in {path.parent} ({reason}); this run goes on, and the next one "
            "samples it again (ERASE_CACHE_DIR chooses another cache folder)",
            file=sys.stderr,
        )


def sampling_key(pipe, **settings) -> str:
    """The cache key of what the frozen pipeline samples: its weights, the dtype and autocast
    precision it samples in, its scheduler, and the caller's ``settings`` (prompts, seeds, steps)."""
    return hashlib.sha256(
        json.dumps(
            {
                "model": model_fingerprint(pipe),
                **settings,
                "dtype": str(pipe.unet.dtype),
                # sampled under autocast is another result (absent when off: older caches stay valid)
                **({"autocast": autocast} if (autocast := _autocast_dtype(pipe.device.type)) else {}),
                # what the UNet predicts, and how it is sampled: two pipelines sharing UNet weights
                # (e.g. an ε model and a v model built in memory) must not share a result
                "scheduler": [type(pipe.scheduler).__name__]
                + sorted(f"{k}={v}" for k, v in pipe.scheduler.config.items() if not k.startswith("_")),
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()[:24]


class OutOfMemoryWithFix(torch.OutOfMemoryError):
    """Out of memory where the usual levers (batch size, checkpointing) do not help: it carries
    its own problem and fix, which `erase`'s one-line message prints instead of the command's."""

    def __init__(self, problem: str, fix: str):
        super().__init__(f"{problem}; {fix}")
        self.problem, self.fix = problem, fix


def halving_on_out_of_memory(start: int, what: str = "the latent bank"):
    """accelerate's ``find_executable_batch_size`` from ``start``, halving the batch each time the
    accelerator runs out of memory (its own default takes only 10% off): SDXL at 1024 px does not
    fit 32 images with guidance on every GPU. The decorated function takes the batch size.

    When not even one image fits, accelerate says only "No executable batch size found, reached
    zero"; that ends here as an out-of-memory error naming ``what`` and the disk cache, which is
    the one way round it (measured: SDXL's bank in fp32 did not fit a 16 GB cap at batch 1)."""
    size = start

    def halve() -> int:
        nonlocal size
        size //= 2
        return size

    halving = find_executable_batch_size(starting_batch_size=start, reduce_batch_size_fn=halve)

    def decorate(function):
        retried = halving(function)

        @functools.wraps(function)
        def sample(*args, **kwargs):
            try:
                return retried(*args, **kwargs)
            except RuntimeError as err:
                if size > 0 or "No executable batch size found" not in str(err):
                    raise
                raise OutOfMemoryWithFix(
                    f"{what} does not fit even one image at a time",
                    f"sample it once on an accelerator with more memory: it is cached in {cache_dir()} "
                    "(ERASE_CACHE_DIR) and reused by every run of the same model, prompts and settings",
                ) from None

        return sample

    return decorate


def _autocast_dtype(device_type: str) -> str | None:
    """The precision autocast samples in here (None when off): part of what a bank is."""
    if not torch.is_autocast_enabled(device_type):
        return None
    return str(torch.get_autocast_dtype(device_type))


@torch.no_grad()
def generate_latents(
    pipe,
    prompts: list[str],
    per_prompt: int,
    seed: int,
    steps: int,
    guidance: float,
    batch_size: int = 32,
    progress: bool = True,
    desc: str = "latent bank",
) -> torch.Tensor:
    """x_0 latents (scaled as the UNet sees them), (P, K, 4, h, w); cached on disk."""
    key = sampling_key(pipe, prompts=prompts, k=per_prompt, seed=seed, steps=steps, guidance=guidance)
    path = cache_dir() / "banks" / f"{key}.safetensors"
    if path.is_file():

        def fits(tensors: dict) -> bool:
            return set(tensors) == {"latents"} and tensors["latents"].shape[:2] == (len(prompts), per_prompt)

        if (cached := read_cached(path, "latent bank", fits)) is not None:
            return cached["latents"]
    jobs = [(p, k) for p in range(len(prompts)) for k in range(per_prompt)]

    # Each latent has its own generator, so the bank does not depend on the batch it was drawn in.
    @halving_on_out_of_memory(batch_size)
    def sample(batch: int) -> list[torch.Tensor]:
        out = []
        bar = progress_bar(len(jobs), desc, unit="latent", enabled=progress)
        for first in range(0, len(jobs), batch):
            chunk = jobs[first : first + batch]
            generators = [torch.Generator("cpu").manual_seed(seed + 1000 * p + k) for p, k in chunk]
            result = pipe(
                prompt=[prompts[p] for p, _ in chunk],
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=generators,
                output_type="latent",
            )
            out.append(result.images.float().cpu())
            bar.update(len(chunk))
        bar.close()
        return out

    out = sample()
    latents = torch.cat(out).reshape(len(prompts), per_prompt, *out[0].shape[1:])
    write_cached(path, "latent bank", {"latents": latents})
    return latents
