"""--retain-focus: each retain prompt's running retain loss, and draws that follow it.

Expectations worked out by hand: the averages after crafted batches, the sampling weights they
give, a bank that draws only the prompts its weights allow."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from erase.retain_focus import RetainFocus
from erase.xt_sources import LatentBank
from pipelines.conditioning import Conditioning


def test_drift_is_each_prompts_running_loss_and_weights_follow_it():
    focus = RetainFocus(3, share=0.5, decay=0.9, power=1.0)
    assert focus.weights() is None  # nothing seen yet: uniform
    focus.observe(torch.tensor([0, 0, 2]), torch.tensor([1.0, 3.0, 5.0]))
    assert focus.drift.tolist() == [2.0, 0.0, 5.0]  # first sight: the batch's mean per prompt
    expected = torch.tensor([0.5 / 3 + 0.5 * 2 / 7, 0.5 / 3, 0.5 / 3 + 0.5 * 5 / 7], dtype=torch.float64)
    torch.testing.assert_close(focus.weights(), expected)
    squared = RetainFocus(3, share=0.5, power=2.0)
    squared.drift = focus.drift.clone()
    expected = torch.tensor([0.5 / 3 + 0.5 * 4 / 29, 0.5 / 3, 0.5 / 3 + 0.5 * 25 / 29], dtype=torch.float64)
    torch.testing.assert_close(squared.weights(), expected)
    focus.observe(torch.tensor([0]), torch.tensor([4.0]))
    torch.testing.assert_close(focus.drift, torch.tensor([0.9 * 2 + 0.1 * 4, 0.0, 5.0], dtype=torch.float64))


def test_drift_sums_over_processes_before_averaging():
    """``total`` sums each prompt's losses and counts over processes: here a second process saw
    prompt 1 with loss 6 and prompt 0 with loss 2."""
    other = torch.tensor([[2.0, 6.0], [1.0, 1.0]])  # its sums and counts
    focus = RetainFocus(2, share=1.0)
    focus.observe(torch.tensor([0, 0]), torch.tensor([1.0, 3.0]), total=lambda v: v + other)
    assert focus.drift.tolist() == [2.0, 6.0]  # (1 + 3 + 2) / 3, 6 / 1
    restored = RetainFocus(2, share=1.0)
    restored.load_state(focus.state())
    assert torch.equal(restored.drift, focus.drift)


def test_bank_draws_only_the_prompts_its_weights_allow():
    bank = LatentBank.__new__(LatentBank)
    bank.latents = {"retain": torch.randn(3, 2, 4, 2, 2)}  # 3 prompts × 2 latents each
    bank.conditions = {"retain": _conditioning(3)}
    bank.t_min, bank.t_max = 0, 999
    bank.noise_scheduler = DDPMScheduler()
    generator = torch.Generator().manual_seed(0)
    draw = bank.draw("retain", 64, generator, None, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    assert draw.rows.tolist() == [2] * 64
    assert torch.equal(draw.cond.text, bank.conditions["retain"].text[[2] * 64])
    uniform = bank.draw("retain", 256, generator, None)
    assert set(uniform.rows.tolist()) == {0, 1, 2}


def _conditioning(rows: int) -> Conditioning:
    return Conditioning(torch.arange(rows, dtype=torch.float32)[:, None, None].expand(rows, 1, 4).clone())
