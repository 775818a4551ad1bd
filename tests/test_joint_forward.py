"""``--joint-forward``: the forget and retain halves through the trained UNet as one call, with
one backward. The same losses and, to float rounding, the same gradient as two calls; only where
a step's gradient is one backward of ℓ_u + λ·ℓ_r."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import erase.loop as loop
from erase.cli import main
from erase.config import TrainConfig
from prompts import InputError


@pytest.fixture
def retain(write):
    return write("retain.txt", "a blue square\na green cat\n")


def config(model, retain, output, **kw) -> TrainConfig:
    settings = dict(
        concept="a red circle",
        retain_unconditional=0.5,
        steps=3,
        batch_size=4,
        bank_size=2,
        bank_steps=1,
        learning_rate=1e-2,
        progress=False,
    )
    return TrainConfig(model=str(model), retain=str(retain), output=str(output), **(settings | kw))


def trained_calls(run: loop.ErasureRun) -> list[int]:
    """Latents of each call of the trained UNet with grad (the calls a backward goes through)."""
    calls = []
    run.unet.register_forward_pre_hook(lambda _, args: calls.append(len(args[0])) if torch.is_grad_enabled() else None)
    return calls


@pytest.mark.parametrize(
    ("folder", "method"),
    [("tiny_pipeline_dir", "weighted"), ("tiny_pipeline_dir", "eupmu"), ("tiny_sdxl_dir", "eupmu-fast")],
)
def test_one_call_gives_the_two_calls_losses_and_steps(folder, method, request, retain, tmp_path):
    runs = {}
    for joint in (False, True):
        cfg = config(request.getfixturevalue(folder), retain, tmp_path / f"{joint}", method=method, joint_forward=joint)
        run = loop.ErasureRun(cfg)
        run.setup()
        calls = trained_calls(run)
        logs = []
        for run.step in range(3):
            logs.append(run.train_step())
        runs[joint] = calls, logs, [p.detach().clone() for p in run.params]
    (apart_calls, apart_logs, apart), (joint_calls, joint_logs, joint) = runs[False], runs[True]
    assert apart_calls == [4, 4] * 3 and joint_calls == [8] * 3
    for a, b in zip(apart_logs, joint_logs, strict=True):
        assert a.keys() == b.keys()
        for key in ("loss_forget", "loss_retain", "lambda"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-9), key
    for a, b in zip(apart, joint, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_a_calibration_warm_up_step_keeps_two_calls(tiny_pipeline_dir, retain, tmp_path):
    """Its two backward passes would each go through all 2B rows of one call."""
    cfg = config(
        tiny_pipeline_dir,
        retain,
        tmp_path / "run",
        method="eupmu",
        lambda_gain=1.0,
        lambda_warmup=3,
        joint_forward=True,
    )
    run = loop.ErasureRun(cfg)
    run.setup()
    calls = trained_calls(run)
    for run.step in range(5):
        run.train_step()
    assert calls == [4, 4] * 3 + [8] * 2


@pytest.mark.parametrize("method", ["explicit", "none"])
def test_a_method_without_one_backward_of_both_is_refused(method, tiny_pipeline_dir, retain, tmp_path, capsys):
    with pytest.raises(InputError, match="--joint-forward"):
        config(tiny_pipeline_dir, retain, tmp_path / "run", method=method, joint_forward=True)
    argv = ["train", "--model", str(tiny_pipeline_dir), "--concept", "a red circle", "--retain", str(retain)]
    code = main([*argv, "--output", str(tmp_path / "cli"), "--method", method, "--joint-forward"])
    assert code == 2 and not (tmp_path / "cli").exists()
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_run_started_without_it_is_not_resumed_with_it(tiny_pipeline_dir, retain, tmp_path):
    out = tmp_path / "run"
    loop.train(config(tiny_pipeline_dir, retain, out, steps=2, checkpoint_every=1))
    saved = json.loads((out / loop.CONFIG_NAME).read_text())
    del saved["joint_forward"]  # as a run from before the option recorded it
    (out / loop.CONFIG_NAME).write_text(json.dumps(saved))
    with pytest.raises(InputError, match="joint_forward=False"):
        loop.ErasureRun(config(tiny_pipeline_dir, retain, out, steps=4, resume=True, joint_forward=True)).check_inputs()
    assert load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))


def test_esd_alone_runs_the_retain_half_it_only_logs_without_a_graph(tiny_pipeline_dir, retain, tmp_path):
    """``none`` takes no gradient of ℓ_r: a graph of the retain forward would only hold memory."""
    run = loop.ErasureRun(config(tiny_pipeline_dir, retain, tmp_path / "run", method="none"))
    run.setup()
    calls = trained_calls(run)
    logs = []
    for run.step in range(2):
        logs.append(run.train_step())
    assert calls == [4, 4]  # the forget half only
    assert logs[0]["loss_retain"] == 0 < logs[1]["loss_retain"]  # logged still: at θ₀, then after a step


@pytest.mark.parametrize(("method", "calls"), [("eupmu-fast", [8, 8]), ("weighted", [8, 8]), ("explicit", [4, 4] * 2)])
def test_by_default_the_halves_are_one_call_where_the_method_allows(method, calls, tiny_pipeline_dir, retain, tmp_path):
    """Since 2026-11-26 (0.60-0.65x a step at batch 1 on an H200, README): no flag needed."""
    cfg = config(tiny_pipeline_dir, retain, tmp_path / "run", method=method, steps=2)
    assert cfg.joint_forward is None
    run = loop.ErasureRun(cfg)
    run.setup()
    seen = trained_calls(run)
    for run.step in range(2):
        run.train_step()
    assert seen == calls


def test_a_run_started_with_no_joint_forward_is_resumed_only_with_it(tiny_pipeline_dir, retain, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--model", str(tiny_pipeline_dir), "--concept", "a red circle", "--retain", str(retain)]
    argv += ["--bank-size", "1", "--bank-steps", "1", "--batch-size", "2", "--output", str(out), "--no-progress"]
    argv += ["--steps", "2", "--checkpoint-every", "1"]
    assert main([*argv, "--no-joint-forward"]) == 0
    assert json.loads((out / loop.CONFIG_NAME).read_text())["joint_forward"] is False
    # resumed under today's default it would mix two runs: refused, naming the switch that resumes it
    assert main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "joint_forward=False, not None" in err[0] and "(--no-joint-forward)" in err[0], err
    assert main([*argv, "--resume", "--no-joint-forward"]) == 0  # the finished run, found complete
