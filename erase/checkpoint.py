"""Resumable training checkpoints made only of safetensors and JSON (no pickles).

A checkpoint holds the trainable tensors, Adam's state, the balancer's state (λ), the step and
every process's data-generator RNG state (each process draws its own batches), so a resumed run
draws the same batches, noise and timesteps on every process and ends where an uninterrupted
one would. Each checkpoint is written to a temporary folder and
renamed; the previous one is removed only after the new one is complete.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pipelines.files import atomic_folder
from prompts.errors import InputError

CHECKPOINTS = "checkpoints"


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, slots in state["state"].items():
        for name, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    run_dir: Path,
    step: int,
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    balancer_state: dict,
    rng_states: list[torch.Tensor],
    scaler_state: dict | None = None,
    extra: dict[str, torch.Tensor] | None = None,
) -> Path:
    """``rng_states``: the data generator's state of process 0, 1, ... (one entry per process);
    ``scaler_state``: fp16's loss scaler (its scale and growth tracker), so an fp16 resume is exact;
    ``extra``: other tensors the run's state needs (adversarial training's prefixes)."""
    root = Path(run_dir) / CHECKPOINTS
    target = root / f"step-{step:07d}"
    opt_tensors, opt_meta = _optimizer_tensors(optimizer)
    with atomic_folder(target, overwrite=True) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
        rng = {_rng_key(rank): state.cpu() for rank, state in enumerate(rng_states)}
        extras = {EXTRA + name: value.detach().cpu().contiguous() for name, value in (extra or {}).items()}
        save_file(opt_tensors | rng | extras, str(tmp / "optimizer.safetensors"))
        meta = {"step": step, "balancer": balancer_state, "optimizer": opt_meta, "scaler": scaler_state}
        (tmp / "state.json").write_text(json.dumps(meta))
    for old in root.glob("step-*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    return target


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted(p for p in (Path(run_dir) / CHECKPOINTS).glob("step-*") if (p / "state.json").is_file())
    return found[-1] if found else None


EXTRA = "__extra__."


def _rng_key(rank: int) -> str:
    return "__rng__" if rank == 0 else f"__rng__.{rank}"  # process 0's key predates several processes


def load_checkpoint(
    path: Path,
) -> tuple[int, dict[str, torch.Tensor], dict, dict, list[torch.Tensor], dict | None, dict[str, torch.Tensor]]:
    """(step, trainable tensors, optimizer state_dict, balancer state, RNG state per process, loss
    scaler state or None, the extra tensors); a damaged checkpoint is named with the fix (it is
    always written whole, so something else cut it)."""
    try:
        meta = json.loads((path / "state.json").read_text(encoding="utf-8"))
        opt = load_file(str(path / "optimizer.safetensors"))
        rng = [opt.pop(_rng_key(0))]
        while _rng_key(len(rng)) in opt:
            rng.append(opt.pop(_rng_key(len(rng))))
        extra = {key.removeprefix(EXTRA): opt.pop(key) for key in [k for k in opt if k.startswith(EXTRA)]}
        return (
            int(meta["step"]),
            load_file(str(path / "trainable.safetensors")),
            _optimizer_state(opt, meta["optimizer"]),
            meta["balancer"],
            rng,
            meta.get("scaler"),
            extra,
        )
    except Exception as err:  # json, safetensors and key errors alike mean "damaged"
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise InputError(
            f"checkpoint {path} is damaged ({reason}); delete that folder to restart the run from step 0 "
            "with --resume, or use --overwrite"
        ) from None
