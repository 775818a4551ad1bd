"""Adversarial training (erase/adversarial.py): the inner attack lowers its own objective and moves
nothing but its prefixes, and the unlearning loss then takes the prefixed prompts. Resume
exactness is in test_train.py's resume cases; the flags' bad values in test_bad_input.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_train import tiny_config

import erase.loop as loop


@pytest.fixture()
def retain_file(write):
    return write("retain.txt", "a blue square\na green cat\n")


def _run(tiny_pipeline_dir, retain_file, tmp_path, **settings) -> loop.ErasureRun:
    run = loop.ErasureRun(tiny_config(tiny_pipeline_dir, retain_file, tmp_path / "run", **settings))
    run.setup()
    return run


def test_a_round_lowers_the_attack_objective_and_moves_only_the_prefixes(tiny_pipeline_dir, retain_file, tmp_path):
    run = _run(tiny_pipeline_dir, retain_file, tmp_path, adversarial_every=1)
    unet, adversarial = run.accelerator.unwrap_model(run.unet), run.adversarial
    before = {name: p.detach().clone() for name, p in unet.named_parameters()}
    fixed = run._draw("forget", 2)
    start = [v.clone() for v in adversarial.values]

    def objective(values) -> float:
        with torch.no_grad():
            cond = adversarial.encode(fixed.rows, values)
            return F.mse_loss(run._epsilon(unet, fixed, cond), run._frozen_epsilon(fixed)).item()

    first = objective(adversarial.values)
    log = adversarial.attack(
        20,
        1e-2,
        draw=lambda: fixed,
        target=run._frozen_epsilon,
        predict=lambda draw, cond: run._epsilon(unet, draw, cond),
        average=lambda value: value,
    )
    assert objective(adversarial.values) < 0.9 * first
    assert log["adversarial_loss_last"] < log["adversarial_loss_first"]
    assert not torch.equal(adversarial.values[0], start[0])
    for name, param in unet.named_parameters():  # the attack moved no weight and left no gradient
        assert torch.equal(param, before[name]) and param.grad is None, name

    # What the training steps now see: the prefixed prompts' encoding, not the plain prompts'.
    cond = adversarial.condition(fixed)
    assert torch.equal(cond.text, adversarial.encode(fixed.rows, adversarial.values).text.detach())
    assert not torch.allclose(cond.text, fixed.cond.text)


def test_the_unlearning_loss_takes_the_prefixed_prompts_once_a_round_has_run(
    tiny_pipeline_dir, retain_file, tmp_path, monkeypatch
):
    run = _run(tiny_pipeline_dir, retain_file, tmp_path, adversarial_every=2, adversarial_iterations=2, steps=3)
    seen: list[tuple[int, object]] = []  # (step, draw, conditioning) of every call of the model being erased
    real = loop.ErasureRun._epsilons

    def spy(self, model, parts):
        if model is self.unet:
            seen.extend((self.step, draw, cond) for draw, cond in parts)
        return real(self, model, parts)

    monkeypatch.setattr(loop.ErasureRun, "_epsilons", spy)
    for step in range(3):
        run.step = step
        log = run.train_step()
        assert ("adversarial_loss_first" in log) == (step == 2)
    assert all(cond is draw.cond for step, draw, cond in seen if step < 2)  # before the first round: plain prompts
    # the attack's calls, then ℓ_u's: the last call under other than its draw's own prompts
    last = [cond for step, draw, cond in seen if step == 2 and cond is not draw.cond][-1]
    expected = run.adversarial.cond.text[torch.zeros(2, dtype=torch.long)]  # one forget prompt, batch 2
    assert torch.equal(last.text, expected) and not last.text.requires_grad


def test_prefixes_that_would_push_the_prompt_past_the_encoders_limit_are_refused(
    tiny_pipeline_dir, retain_file, tmp_path, capsys
):
    """k prefix tokens plus the prompt must fit the encoder's 75 places: past them the prompt's
    end (the concept's own words) would be cut without a word, and past 77 the slots cannot be
    filled. "a red circle" is 3 tokens: 72 prefixes fit, 73 are refused before anything is written."""
    from erase.cli import main

    run = _run(tiny_pipeline_dir, retain_file, tmp_path, adversarial_every=1, adversarial_tokens=72)
    assert run.adversarial.prompts == [" ".join(["a"] * 72 + ["a red circle"])]
    capsys.readouterr()  # the set-up's loading output
    for tokens, most in ((73, "use at most 72 attack tokens"), (80, "use at most 72 attack tokens")):
        out = tmp_path / f"run-{tokens}"
        argv = ["train", "--model", str(tiny_pipeline_dir), "--concept", "a red circle", "--retain", str(retain_file)]
        argv += ["--adversarial-every", "1", "--adversarial-tokens", str(tokens), "--output", str(out)]
        assert main([*argv, "--steps", "1", "--bank-size", "1", "--bank-steps", "1", "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and f"{tokens} attack tokens in front of 'a red circle'" in err and most in err, err
        assert not out.exists()
