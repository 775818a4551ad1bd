"""`--half-frozen` (erase/half_frozen.py): the untrained UNet tensors and the trained ones'
originals are held in bf16 during the run, and the saved model gets its fp32 values back.

bf16 autocast runs on a CPU, so all of it is checked here on a tiny pipeline."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import finished_run, same_weights, tiny_train_config

import erase.loop as loop
from erase.config import TrainConfig
from erase.half_frozen import HalfFrozen
from erase.params import PARAMETER_SETS
from prompts import InputError


def _config(tiny_pipeline_dir, write, output, **kw) -> TrainConfig:
    forget, retain = write("forget.txt", "a red circle\n"), write("retain.txt", "a blue square\na green cat\n")
    return tiny_train_config(
        tiny_pipeline_dir, forget, retain, output, **({"learning_rate": 1e-2, "mixed_precision": "bf16"} | kw)
    )


def _unet(folder):
    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


@pytest.mark.parametrize("parameters", ["xattn", "lora"])
def test_saved_model_keeps_untrained_tensors_exact(tiny_pipeline_dir, write, tmp_path, parameters):
    """Every tensor the run did not train is saved bit for bit as the base holds it (in fp32),
    although the run held it in bf16; the trained ones moved."""
    run = loop.train(_config(tiny_pipeline_dir, write, tmp_path / "run", parameters=parameters, half_frozen=True))
    base, erased = _unet(tiny_pipeline_dir), _unet(run)
    assert base.keys() == erased.keys()
    assert all(t.dtype == torch.float32 for t in erased.values())
    trained = [n for n in base if PARAMETER_SETS[parameters].changes(n, {"parameters": parameters})]
    assert trained
    for name in base:
        if name in trained:
            continue
        assert torch.equal(base[name], erased[name]), name
    assert any(not torch.equal(base[n], erased[n]) for n in trained)


def test_run_holds_untrained_tensors_in_half(tiny_pipeline_dir, write, tmp_path):
    """During the run: untrained tensors and the frozen originals are bf16, trained ones fp32,
    and the half-frozen run follows the fp32-frozen one closely (norms see rounded weights).
    Compared after one update: at this learning rate Adam turns bf16's rounding of near-zero
    gradients into whole steps, so later steps drift apart by an amount that depends on the CPU's
    bf16 kernels (measured on a CPU with AMX: 1% after one update, 10% after two)."""
    runs = {}
    for half in (False, True):
        run = loop.ErasureRun(_config(tiny_pipeline_dir, write, tmp_path / f"run-{half}", half_frozen=half))
        run.setup()
        for step in range(2):
            run.step = step
            log = run.train_step()
        runs[half] = (run, log)
    run, _ = runs[True]
    unet = run.accelerator.unwrap_model(run.unet)
    dtypes = {p.requires_grad: p.dtype for p in unet.parameters()}
    assert dtypes == {True: torch.float32, False: torch.bfloat16}
    assert {t.dtype for t in run.frozen.originals.values()} == {torch.bfloat16}
    full, half = runs[False][1], runs[True][1]
    assert half["loss_forget"] == pytest.approx(full["loss_forget"], rel=0.05)
    assert half["loss_retain"] == pytest.approx(full["loss_retain"], rel=0.05) and full["loss_retain"] > 0


def test_restore_puts_back_values_not_rounded_ones():
    """A value bf16 cannot hold comes back exactly (the copy is fp32, not the cast-back half)."""
    layer = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
    layer[1].requires_grad_(False)
    before = layer[1].weight.detach().clone()
    kept = HalfFrozen(layer, _NoOriginals(), "bf16")
    assert layer[1].weight.dtype == torch.bfloat16 and layer[0].weight.dtype == torch.float32
    assert not torch.equal(layer[1].weight.float(), before)  # rounding happened
    kept.restore(layer)
    assert layer[1].weight.dtype == torch.float32 and torch.equal(layer[1].weight, before)


class _NoOriginals:
    def hold_in(self, dtype):
        pass


def test_half_frozen_needs_mixed_precision(tiny_pipeline_dir, write, tmp_path):
    with pytest.raises(InputError, match="--mixed-precision bf16"):
        _config(tiny_pipeline_dir, write, tmp_path / "run", half_frozen=True, mixed_precision="no")


def test_fp16_on_a_cpu_holds_nothing_in_half(tiny_pipeline_dir, write, tmp_path, capsys):
    """accelerate has no fp16 autocast on a CPU: the run is fp32, so --half-frozen must not cast
    weights to fp16 either (fp32 matrix products would refuse them). It says so and runs the
    plain fp32 run, bit for bit."""
    plain = finished_run(loop.train(_config(tiny_pipeline_dir, write, tmp_path / "plain", mixed_precision="no")))
    config = _config(tiny_pipeline_dir, write, tmp_path / "half", mixed_precision="fp16", half_frozen=True)
    half = finished_run(loop.train(config))
    assert "fp16 has no effect on CPU (the run is fp32), nor --half-frozen" in capsys.readouterr().err
    assert [{k: v for k, v in line.items() if k != "skipped"} for line in half[0]] == plain[0]
    assert same_weights(half[1], plain[1])


def test_bank_sampled_under_autocast_is_its_own_cache_entry(tiny_pipeline_dir, tmp_path, monkeypatch):
    """Runs with --mixed-precision sample the bank under autocast; such a bank must not be served
    from (or serve) the cache of an fp32 one."""
    from pipelines.latents import generate_latents
    from pipelines.loading import load_pipeline

    monkeypatch.setenv("ERASE_CACHE_DIR", str(tmp_path / "cache"))
    pipe = load_pipeline(str(tiny_pipeline_dir), device="cpu")
    settings = dict(prompts=["a red circle"], per_prompt=2, seed=0, steps=2, guidance=5.0, progress=False)
    full = generate_latents(pipe, **settings)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = generate_latents(pipe, **settings)
    assert not torch.equal(full, half)
    assert len(list((tmp_path / "cache" / "banks").glob("*.safetensors"))) == 2
    assert torch.equal(generate_latents(pipe, **settings), full)  # the fp32 entry is still served
