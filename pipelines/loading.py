"""Load a Stable Diffusion pipeline offline from whatever the user points at.

A model spec is tried, in order, as:
  1. ``default``: the embedded tiny model shipped in ``pipelines/default/model``;
  2. a local diffusers pipeline folder (has ``model_index.json``);
  3. a single-file checkpoint (``.safetensors``; pickles only with ``allow_pickle``) in the
     original SD 1.x / 2.x / SDXL layout, its family told by its keys;
  4. a model id already in the local Hugging Face cache.
The family (``pipelines/families``) picks the diffusers pipeline class. Nothing is downloaded: a
single file without ``--model-config`` uses the standard configs shipped in the package.
When nothing matches, one ``ModelLoadError`` says what was tried.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import diffusers
import torch
from packaging import version
from safetensors import safe_open

from pipelines.families import Family, UnsupportedFamilyError, family_of_folder, family_of_keys
from pipelines.latents import cache_dir
from pipelines.tokenizer import write_clip_tokenizer_files
from prompts.errors import InputError

DEFAULT_MODEL_DIR = Path(__file__).parent / "default" / "model"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SINGLE_FILE_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# names a UNet-only state dict starts with (original or diffusers layout)
_UNET_PREFIXES = ("model.diffusion_model.", "down_blocks.", "up_blocks.", "mid_block.", "conv_in.", "time_embedding.")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
# diffusers 0.42 renamed `torch_dtype` to `dtype` (the old name still works, with a warning).
_DTYPE_KWARG = "dtype" if version.parse(diffusers.__version__) >= version.parse("0.42") else "torch_dtype"


MODEL_CONFIG_HELP = (
    "diffusers folder (or `default`) with a single-file checkpoint's architecture; default: the standard "
    "SD 1.5 / 2.1-v / XL configs shipped with erase, picked by the file's keys"
)


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


def _load_error(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def _family_of_folder(folder: Path) -> Family:
    try:
        return family_of_folder(folder)
    except UnsupportedFamilyError as err:
        raise ModelLoadError(f"{folder}: {err}") from None
    except (OSError, ValueError, UnicodeDecodeError) as err:
        problem = _load_error(err)
        raise ModelLoadError(f"{folder}/model_index.json is damaged ({problem}); save the pipeline again") from None


def _from_folder(folder: Path, dtype: torch.dtype):
    if not (folder / "model_index.json").is_file():
        raise ModelLoadError(
            f"{folder} is a folder but not a diffusers pipeline (no model_index.json); "
            "point --model at a folder saved by diffusers' save_pretrained"
        )
    family = _family_of_folder(folder)
    try:
        return family.pipeline_class.from_pretrained(folder, local_files_only=True, **{_DTYPE_KWARG: dtype})
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelLoadError(
            f"{folder} is an incomplete or damaged pipeline folder ({_load_error(err)}); "
            "check that every component folder named in model_index.json is there"
        ) from None


def single_file_keys(path: Path, allow_pickle: bool) -> set[str]:
    """The tensor names of a single-file checkpoint, read without loading its tensors where the
    format allows (safetensors' header; a pickle is memory-mapped)."""
    try:
        if path.suffix.lower() in PICKLE_SUFFIXES:
            if not allow_pickle:
                raise ModelLoadError(
                    f"{path} is a pickle checkpoint, which can run code when loaded; convert it to "
                    ".safetensors, or pass --allow-pickle if you trust it (it is then read with weights_only=True)"
                )
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else {}
            return set(state)
        with safe_open(str(path), "pt") as handle:
            return set(handle.keys())
    except ModelLoadError:
        raise
    except Exception as err:  # safetensors and torch raise many types here; all mean "unreadable"
        raise ModelLoadError(f"could not read single-file checkpoint {path} ({_load_error(err)})") from None


def single_file_family(path: Path, config: str | Path | None, allow_pickle: bool) -> tuple[Family, Path | None]:
    """(family, --model-config folder or None) for a single file: the family comes from
    --model-config when given (and must agree with the file's keys), else from the keys; None
    means the standard model's configs shipped in the package, so nothing is looked up on a hub."""
    keys = single_file_keys(path, allow_pickle)
    try:
        from_keys = family_of_keys(keys)
    except UnsupportedFamilyError as err:
        raise ModelLoadError(f"{path}: {err}") from None
    if config is not None:
        folder = _config_folder(config)
        family = _family_of_folder(folder)
        if from_keys is not None and from_keys is not family:
            raise ModelLoadError(
                f"{path} holds a {from_keys.title} checkpoint but --model-config {config} is a {family.title} "
                "pipeline; give a --model-config of the same family, or drop it"
            )
        return family, folder
    if from_keys is None:
        hint = (
            "it holds only UNet weights: apply them to a base model with `erase apply`"
            if keys and all(k.startswith(_UNET_PREFIXES) for k in keys)
            else "pass --model-config with a diffusers folder of its architecture"
        )
        raise ModelLoadError(
            f"{path} is not a whole Stable Diffusion checkpoint in the original layout "
            f"(no SD 1.x, 2.x or SDXL text-encoder keys); {hint}"
        )
    return from_keys, None


def shipped_config_folder(family: Family) -> Path:
    """The family's standard configs as a diffusers folder (no weights) in the cache, with the
    tokenizer vocabulary written from open_clip's BPE: shipping it would add 2 MB per tokenizer."""
    source = family.config_dir
    files = sorted(p for p in source.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(source)).encode() + file.read_bytes())
    target = cache_dir() / "configs" / f"{family.shipped_config}-{digest.hexdigest()[:12]}"
    if (target / "model_index.json").is_file():
        return target

    # Several processes (accelerate launch) may build it at once: each fills its own temporary
    # folder and the first rename wins; the others discard theirs. Nobody replaces a folder
    # another process may be reading.
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        for file in files:
            (tmp / file.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, tmp / file.relative_to(source))
        for name in family.tokenizer_folders:
            write_clip_tokenizer_files(tmp / name, config=False)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _from_single_file(path: Path, dtype: torch.dtype, config: str | Path | None, allow_pickle: bool):
    family, config_dir = single_file_family(path, config, allow_pickle)
    shipped = config_dir is None
    config_dir = shipped_config_folder(family) if shipped else config_dir
    if shipped and family.shipped_note:
        print(f"note: {path.name}: {family.shipped_note}", file=sys.stderr)
    kwargs = {_DTYPE_KWARG: dtype, "local_files_only": True, "config": str(config_dir)}
    try:
        pipe = family.pipeline_class.from_single_file(str(path), **kwargs)
    except Exception as err:  # diffusers raises many types here; all mean "cannot read this file"
        hint = (
            f"its keys are those of {family.title}, but its tensors do not fit the standard "
            f"{family.title} architecture shipped with erase: pass --model-config with a diffusers folder "
            "of its architecture"
            if shipped
            else f"is it a {family.title} checkpoint with the architecture of {config_dir}?"
        )
        raise ModelLoadError(f"could not load single-file checkpoint {path} ({_load_error(err)}); {hint}") from None
    return pipe


def _config_folder(config: str | Path) -> Path:
    folder = DEFAULT_MODEL_DIR if str(config) == "default" else Path(config).expanduser()
    if not (folder / "model_index.json").is_file():
        raise ModelLoadError(f"--model-config {config} is not a diffusers pipeline folder (no model_index.json)")
    return folder


def _from_cache(model_id: str, dtype: torch.dtype):
    """A model id whose snapshot is complete in the local Hugging Face cache, or None."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(model_id, local_files_only=True))
    except Exception:  # not cached (or only partly): the caller says what was tried
        return None
    return _from_folder(folder, dtype)


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


def check_model(model: str | Path, config: str | Path | None = None, allow_pickle: bool = False) -> None:
    """Refuse, before any work starts, a model spec that names nothing or a family erase does not
    erase from. Reads only ``model_index.json`` or a single file's tensor names."""
    check_model_exists(model)
    path = Path(str(model)).expanduser()
    if str(model) == "default" or not path.exists():
        return  # the embedded model, or a hub id looked up when loading
    if path.is_dir() and (path / "model_index.json").is_file():
        _family_of_folder(path)
    elif path.is_file() and path.suffix.lower() in SINGLE_FILE_SUFFIXES:
        single_file_family(path, config, allow_pickle)


def load_pipeline(
    model: str | Path = "default",
    *,
    dtype: str = "float32",
    device: str = "auto",
    config: str | Path | None = None,
    allow_pickle: bool = False,
):
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
