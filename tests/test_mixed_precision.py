"""fp16's loss scaler, made exact (erase/loop.py): balancers and the mask see unscaled gradients,
a step the scaler skips leaves θ and λ alone, and the scaler's state travels in checkpoints.

accelerate gives no loss scaler on a CPU, so these tests hand the run a real
``torch.amp.GradScaler("cpu")``: the loss is multiplied by S before backward exactly as on a GPU.
S is a power of two, so a run with the scaler must equal a run without it bit for bit."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from train_until import killed_in_step

import erase.loop as loop
from erase.balancers.base import flat_params
from erase.config import TrainConfig


@pytest.fixture()
def retain_file(write):
    return write("retain.txt", "a blue square\na green cat\n")


def config(tiny_pipeline_dir, retain_file, output, **kw) -> TrainConfig:
    settings = dict(
        model=str(tiny_pipeline_dir),
        concept="a red circle",
        retain=str(retain_file),
        output=str(output),
        steps=4,
        batch_size=4,
        bank_size=1,
        bank_steps=1,
        progress=False,
        learning_rate=1e-2,
        max_grad_norm=0.0,  # accelerate unscales for clipping only under real fp16 (not on a CPU)
    )
    return TrainConfig(**(settings | kw))


def scaled(monkeypatch, init_scale=2.0**14, growth_interval=10_000):
    """Every accelerator the loop makes from now on carries a CPU loss scaler."""
    real = loop.accelerator_for

    def with_scaler(mixed_precision):
        acc = real(mixed_precision)
        acc.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=growth_interval)
        return acc

    monkeypatch.setattr(loop, "accelerator_for", with_scaler)


def _log(run):
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in open(run / loop.LOG_NAME)]


def _weights(run):
    return load_file(str(run / "unet" / "diffusion_pytorch_model.safetensors"))


CASES = {
    # ε > 0 matters: λ* = −(g_u·g_r + ε)/‖g_r‖² and the update's g_r·u ≤ ε would see S·g against ε.
    # On the default model, whose concept and retain gradients conflict (a tiny random UNet's rarely do).
    "explicit": dict(
        method="explicit", retain_budget=1e-6, model="default", concept="a red drawing of the digit three", retain=None
    ),
    "eupmu+mask": dict(method="eupmu", mask="feasible", mask_micro_batches=2, lambda_lr=1e4),
    "eupmu-calibrated": dict(method="eupmu", lambda_gain=1.0, lambda_warmup=3, retain_budget=1e-5),
    "eupmu-next": dict(method="eupmu", retain_probe="next", lambda_lr=1e4),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_run_with_a_loss_scale_equals_the_run_without(tiny_pipeline_dir, retain_file, tmp_path, monkeypatch, case):
    plain = loop.train(config(tiny_pipeline_dir, retain_file, tmp_path / "plain", **CASES[case]))
    scaled(monkeypatch)
    with_scale = loop.train(config(tiny_pipeline_dir, retain_file, tmp_path / "scaled", **CASES[case]))
    assert _log(plain) == _log(with_scale)
    a, b = _weights(plain), _weights(with_scale)
    assert all(torch.equal(a[k], b[k]) for k in a)
    if case == "explicit":
        assert any(e["update_projected"] for e in _log(plain))  # the budget was active, so S would show


@pytest.mark.parametrize("method", ["eupmu", "eupmu-fast", "eupmu-next"])
def test_a_step_the_scaler_skips_leaves_weights_and_lambda_alone(
    tiny_pipeline_dir, retain_file, tmp_path, monkeypatch, method
):
    scaled(monkeypatch)
    probe = dict(method="eupmu", retain_probe="next") if method == "eupmu-next" else dict(method=method)
    settings = probe | dict(lambda_lr=1e4, retain_budget=1e-5)  # ε > 0: a Δℓ_r of 0 would still move λ
    run = loop.ErasureRun(config(tiny_pipeline_dir, retain_file, tmp_path / "run", **settings))
    run.check_inputs()
    run.setup()
    real_backward = run._backward

    def overflowing(loss, **kwargs):  # what an fp16 overflow leaves: an inf in the scaled gradient
        real_backward(loss, **kwargs)
        run.params[0].grad.view(-1)[0] = float("inf")

    logs, averages = [], []
    for step in range(4):
        run.step = step
        if step == 2:
            run._backward = overflowing
        theta, scale = flat_params(run.params), run._loss_scale()
        logs.append(run.train_step())
        averages.append(getattr(run.balancer, "previous_retain", None))
        run._backward = real_backward
        if step == 2:
            assert logs[-1]["skipped"] == 1.0
            assert torch.equal(flat_params(run.params), theta)
            assert run.balancer.multiplier.value == logs[-1]["lambda"]  # the λ the skipped step used, kept
            assert run._loss_scale() == scale / 2  # the scaler backed off
        else:
            assert "skipped" not in logs[-1]
            assert not torch.equal(flat_params(run.params), theta)
    if method != "eupmu":  # no Δℓ_r across the skipped step: the step after it learns nothing
        assert "retain_increase" not in logs[3] and "retain_increase" in logs[2]
        assert logs[3]["lambda"] == logs[2]["lambda"]
    if method == "eupmu-fast":  # θ did not move: step 3's ℓ_r joins the running average, not restarts it
        decay = run.balancer.settings.lambda_smoothing
        assert averages[3] == pytest.approx(decay * averages[2] + (1 - decay) * logs[3]["loss_retain"], rel=1e-12)


def test_an_overflow_in_a_mask_micro_batch_is_a_skipped_step(tiny_pipeline_dir, retain_file, tmp_path, monkeypatch):
    """The mask's retain-gradient samples are backward passes of their own; the scaler checks only
    the gradient it steps on. An overflow in one sample must skip the step and lower S, as any
    fp16 overflow does, not reject coordinates quietly at every step."""
    scaled(monkeypatch)
    settings = dict(method="eupmu", mask="feasible", mask_micro_batches=2, lambda_lr=1e4)
    run = loop.ErasureRun(config(tiny_pipeline_dir, retain_file, tmp_path / "run", **settings))
    run.check_inputs()
    run.setup()
    real_samples = run._retain_gradient_samples

    def one_overflows(batch):
        samples = real_samples(batch)
        samples[1, 0] = float("inf")
        return samples

    run.step = 0
    run.train_step()
    run.step, run._retain_gradient_samples = 1, one_overflows
    theta, scale = flat_params(run.params), run._loss_scale()
    log = run.train_step()
    assert log["skipped"] == 1.0 and run._loss_scale() == scale / 2
    assert torch.equal(flat_params(run.params), theta)


def test_the_loss_scalers_state_travels_in_checkpoints(tiny_pipeline_dir, retain_file, tmp_path, monkeypatch):
    scaled(monkeypatch, init_scale=2.0**4, growth_interval=1)  # S doubles every step
    settings = dict(method="explicit", steps=5, checkpoint_every=2)
    whole = loop.ErasureRun(config(tiny_pipeline_dir, retain_file, tmp_path / "whole", **settings))
    whole.check_inputs()
    whole.setup()
    whole.train()
    with killed_in_step(4), pytest.raises(KeyboardInterrupt):
        loop.train(config(tiny_pipeline_dir, retain_file, tmp_path / "cut", **settings))
    state = json.loads((tmp_path / "cut" / "checkpoints" / "step-0000002" / "state.json").read_text())
    assert state["scaler"]["scale"] == 2.0**6  # 2⁴ doubled after each of two steps
    resumed = loop.ErasureRun(config(tiny_pipeline_dir, retain_file, tmp_path / "cut", resume=True, **settings))
    resumed.check_inputs()
    resumed.setup()
    assert resumed._loss_scale() == 2.0**6
    resumed.train()
    assert resumed._loss_scale() == whole._loss_scale() == 2.0**9
    assert _log(whole.output) == _log(resumed.output)
