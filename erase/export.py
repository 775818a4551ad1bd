"""Export a run folder as a diffusers folder, one single-file checkpoint, or a delta; apply a delta.

A delta holds only the tensors the run trained (its parameter set) at their erased values, plus
metadata (base model, method, concept), so it is small and says what it must be applied to.
``apply_delta`` refuses a delta whose keys or shapes do not match the base UNet.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

from safetensors import safe_open
from safetensors.torch import save_file

from erase.params import PARAMETER_SETS
from pipelines.files import atomic_folder, atomic_path
from pipelines.loading import load_pipeline
from pipelines.single_file import save_single_file
from prompts import InputError

DELTA_FORMAT = "concept-erase-delta/1"
SINGLE_FILE_FORMAT = "concept-erase-single-file/1"  # a whole model: not to be applied as a delta
ExportFormat = Literal["diffusers", "single-file", "delta"]


def read_run(run: str | Path) -> tuple[Path, dict]:
    run = Path(run)
    config_path = run / "train_config.json"
    if not (run / "model_index.json").is_file() or not config_path.is_file():
        raise InputError(f"{run} is not a finished `erase train` run folder (no model_index.json or train_config.json)")
    try:
        return run, json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise InputError(f"{config_path} is not valid JSON; was the run folder changed by hand?") from None


def _metadata(config: dict, fmt: str = DELTA_FORMAT) -> dict[str, str]:
    concept = config.get("concept") or config.get("forget") or ""
    return {
        "format": fmt,
        "base_model": str(config.get("base_model", "")),
        "method": config["method"],
        "parameters": config["parameters"],
        "concept": concept,
        "forget_prompts": json.dumps(config.get("forget_prompts", [])),
    }


def export_run(run: str | Path, fmt: ExportFormat, output: str | Path, overwrite: bool = False) -> Path:
    run, config = read_run(run)
    output = Path(output)
    if output.exists() and not overwrite:
        raise InputError(f"--output {output} already exists; use --overwrite or another path")
    if fmt == "diffusers":
        with atomic_folder(output, overwrite=True) as tmp:
            for item in run.iterdir():
                if item.name in ("checkpoints",) or item.name.startswith("."):
                    continue
                (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        return output
    pipe = load_pipeline(run, device="cpu")
    if fmt == "single-file":
        return save_single_file(pipe, output, metadata=_metadata(config, SINGLE_FILE_FORMAT))
    chosen = PARAMETER_SETS[config["parameters"]]
    tensors = {k: v.contiguous() for k, v in pipe.unet.state_dict().items() if chosen(k)}
    with atomic_path(output) as tmp:
        save_file(tensors, str(tmp), metadata=_metadata(config))
    return output


def apply_delta(
    delta: str | Path,
    base: str,
    output: str | Path,
    fmt: Literal["diffusers", "single-file"] = "diffusers",
    overwrite: bool = False,
) -> Path:
    delta, output = Path(delta), Path(output)
    if not delta.is_file():
        raise InputError(f"delta {delta} not found")
    if output.exists() and not overwrite:
        raise InputError(f"--output {output} already exists; use --overwrite or another path")
    try:
        with safe_open(str(delta), "pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise InputError(f"{delta} is not a readable safetensors file ({str(err).splitlines()[0]})") from None
    if metadata.get("format") != DELTA_FORMAT:
        hint = "; it is a whole model: load it with --model" if metadata.get("format") == SINGLE_FILE_FORMAT else ""
        raise InputError(f"{delta} is not a concept-erase delta (metadata format {metadata.get('format')!r}){hint}")
    pipe = load_pipeline(base, device="cpu")
    state = pipe.unet.state_dict()
    unknown = sorted(set(tensors) - set(state))
    if unknown:
        raise InputError(
            f"delta key {unknown[0]!r} is not in the base UNet ({len(unknown)} unmatched); "
            f"was it made for another architecture than {base!r}?"
        )
    for key, tensor in tensors.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise InputError(
                f"delta tensor {key!r} has shape {tuple(tensor.shape)}, the base has "
                f"{tuple(state[key].shape)}; the delta was made for another architecture"
            )
    pipe.unet.load_state_dict(tensors, strict=False)
    if fmt == "single-file":
        return save_single_file(pipe, output, metadata=metadata | {"format": SINGLE_FILE_FORMAT})
    with atomic_folder(output, overwrite=True) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    return output
