"""Load a Stable Diffusion pipeline offline from whatever the user points at.

A model spec is tried, in order, as:
  1. ``default``: the embedded tiny model shipped in ``pipelines/default/model``;
  2. a local diffusers pipeline folder (has ``model_index.json``);
  3. a single-file checkpoint (``.safetensors``; pickles only with ``allow_pickle``);
  4. a model id already in the local Hugging Face cache.
Nothing is downloaded. When nothing matches, one ``ModelLoadError`` says what was tried.
"""

from __future__ import annotations

import re
from pathlib import Path

import diffusers
import torch
from diffusers import StableDiffusionPipeline
from packaging import version

from prompts.errors import InputError

DEFAULT_MODEL_DIR = Path(__file__).parent / "default" / "model"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SINGLE_FILE_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
# diffusers 0.42 renamed `torch_dtype` to `dtype` (the old name still works, with a warning).
_DTYPE_KWARG = "dtype" if version.parse(diffusers.__version__) >= version.parse("0.42") else "torch_dtype"


class ModelLoadError(InputError):
    """The model spec could not be loaded; the message says what was tried and the fix."""


def resolve_device(device: str = "auto") -> torch.device:
    """The torch device for ``--device``, refused in one line when this machine does not have it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    backends = {
        "cpu": lambda: 1,
        "cuda": lambda: torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "mps": lambda: int(getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()),
        "xpu": lambda: torch.xpu.device_count() if hasattr(torch, "xpu") and torch.xpu.is_available() else 0,
    }
    if resolved.type not in backends:
        raise InputError(f"device {device!r} is not supported; use auto, cpu, cuda or cuda:N")
    count = backends[resolved.type]()
    if count == 0:
        raise InputError(
            f"device {device!r} asked for, but torch sees no {resolved.type} device here; use --device cpu"
        )
    if resolved.index is not None and resolved.index >= count and resolved.type != "cpu":
        raise InputError(
            f"device {device!r} asked for, but torch sees {count} {resolved.type} device(s); use 0 to {count - 1}"
        )
    return resolved


def check_sampler_steps(pipe, steps: int, option: str = "--steps") -> None:
    """A sampler cannot take more steps than its scheduler has training timesteps (diffusers
    raises a ValueError deep inside ``set_timesteps``)."""
    limit = pipe.scheduler.config.get("num_train_timesteps", 1000)
    if steps > limit:
        raise InputError(
            f"{option} {steps} is more than this model's scheduler has timesteps ({limit}); use at most {limit}"
        )


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if dtype == "float16" and device.type == "cpu":
        raise InputError("float16 needs a CUDA device; on the CPU use --dtype float32 or bfloat16")
    return DTYPES[dtype]


def _hf_cache_dir() -> Path:
    from huggingface_hub.constants import HF_HUB_CACHE

    return Path(HF_HUB_CACHE)


def _from_folder(folder: Path, dtype: torch.dtype) -> StableDiffusionPipeline:
    if not (folder / "model_index.json").is_file():
        raise ModelLoadError(
            f"{folder} is a folder but not a diffusers pipeline (no model_index.json); "
            "point --model at a folder saved by diffusers' save_pretrained"
        )
    try:
        return StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, **{_DTYPE_KWARG: dtype})
    except (OSError, ValueError, KeyError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(
            f"{folder} is an incomplete or damaged pipeline folder ({first}); "
            "check that every component folder named in model_index.json is there"
        ) from None


def _from_single_file(path: Path, dtype: torch.dtype, config: str | Path | None, allow_pickle: bool):
    if path.suffix.lower() in PICKLE_SUFFIXES and not allow_pickle:
        raise ModelLoadError(
            f"{path} is a pickle checkpoint, which can run code when loaded; convert it to "
            ".safetensors, or pass --allow-pickle if you trust it (it is then read with weights_only=True)"
        )
    config_dir = None if config is None else _config_folder(config)
    kwargs = {_DTYPE_KWARG: dtype, "local_files_only": True}
    if config_dir is not None:
        kwargs["config"] = str(config_dir)
    try:
        pipe = StableDiffusionPipeline.from_single_file(str(path), **kwargs)
    except Exception as err:  # diffusers raises many types here; all mean "cannot read this file"
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        hint = (
            "pass --model-config with a diffusers folder of the same architecture "
            "(e.g. `default`, or a local SD 1.5 folder)"
            if config_dir is None
            else f"is it a Stable Diffusion checkpoint with the architecture of {config_dir}?"
        )
        raise ModelLoadError(f"could not load single-file checkpoint {path} ({first}); {hint}") from None
    return pipe


def _config_folder(config: str | Path) -> Path:
    folder = DEFAULT_MODEL_DIR if str(config) == "default" else Path(config)
    if not (folder / "model_index.json").is_file():
        raise ModelLoadError(f"--model-config {config} is not a diffusers pipeline folder (no model_index.json)")
    return folder


def _from_cache(model_id: str, dtype: torch.dtype) -> StableDiffusionPipeline | None:
    try:
        return StableDiffusionPipeline.from_pretrained(model_id, local_files_only=True, **{_DTYPE_KWARG: dtype})
    except (OSError, ValueError):
        return None


def check_model_exists(model: str | Path) -> None:
    """Refuse, before any work starts, a model spec that names nothing: not `default`, no such
    file or folder, and not shaped like a hub id (whose cache is looked up when loading)."""
    spec = str(model)
    if spec == "default" or Path(spec).expanduser().exists() or _HUB_ID.match(spec):
        return
    raise ModelLoadError(
        f"cannot load model {spec!r}: no file or folder of that name, and it is not a hub id (owner/name); "
        "give `default`, a diffusers folder or a .safetensors file"
    )


def load_pipeline(
    model: str | Path = "default",
    *,
    dtype: str = "float32",
    device: str = "auto",
    config: str | Path | None = None,
    allow_pickle: bool = False,
) -> StableDiffusionPipeline:
    """Load ``model`` offline onto ``device``; see the module docstring for what ``model`` may be."""
    target = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, target)
    spec = str(model)
    path = Path(spec).expanduser()
    tried = []
    pipe = None
    if spec == "default":
        if not (DEFAULT_MODEL_DIR / "model_index.json").is_file():
            raise ModelLoadError(
                f"the embedded default model is missing from {DEFAULT_MODEL_DIR}; "
                "reinstall the package or run `python scripts/train_default_model.py`"
            )
        pipe = _from_folder(DEFAULT_MODEL_DIR, torch_dtype)
    elif path.is_dir():
        pipe = _from_folder(path, torch_dtype)
    elif path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise ModelLoadError(
                f"{path} is a file of unknown type {path.suffix!r}; give a .safetensors checkpoint or a pipeline folder"
            )
        pipe = _from_single_file(path, torch_dtype, config, allow_pickle)
    else:
        tried.append(f"no file or folder {path}")
        if _HUB_ID.match(spec):
            pipe = _from_cache(spec, torch_dtype)
            if pipe is None:
                tried.append(f"{spec!r} is not complete in the Hugging Face cache ({_hf_cache_dir()})")
        else:
            tried.append(f"{spec!r} is not a hub id (owner/name) to look up in the Hugging Face cache")
    if pipe is None:
        raise ModelLoadError(
            f"cannot load model {spec!r}: "
            + "; ".join(tried)
            + ". Use `default`, a diffusers folder, a .safetensors file, or download the model once "
            "with huggingface-cli on a machine online and set HF_HOME to that cache"
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(target)
