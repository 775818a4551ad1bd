"""scripts/count_flops.py prices a full-size run as its recorded UNet calls times one call's FLOPs
counted on the meta device. On a tiny model both sides can be had from a real run: torch's
FlopCounterMode over the run's own setup and training, the UNet's share alone, must equal the
sum the script composes. That catches a call the hook misses, a backward pass costed as a
forward (or with the wrong tensors' gradients), and inputs shaped otherwise than the run's."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
from torch.utils.flop_counter import FlopCounterMode

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import count_flops  # noqa: E402

SMALL = ["steps=3", "batch_size=2", "bank_size=1", "bank_steps=2", "checkpoint_every=100"]


def unet_flops(counter: FlopCounterMode, unet) -> int:
    """What FlopCounterMode counted inside the UNet, its backward passes included."""
    return sum(counter.get_flop_counts().get(type(unet).__name__, {}).values())


@pytest.mark.slow
@pytest.mark.parametrize(
    "family, parameters, method, extra",
    [
        ("sd15", "xattn", "eupmu-fast", []),  # the trained halves as one call (the default)
        ("sd15", "xattn", "eupmu-fast", ["joint_forward=false"]),  # as two calls
        ("sd15", "xattn", "explicit", []),  # two backward passes
        ("sd15", "xattn", "eupmu", []),  # one more retain forward after the step
        ("sd15", "full", "weighted", []),  # every tensor's gradient
        ("sd15", "xattn", "eupmu-fast", ["x_source=trajectory"]),  # frozen targets read, not run
        ("sd21", "xattn", "eupmu-fast", []),
        ("sdxl", "xattn", "eupmu-fast", []),  # pooled text and size conditioning
    ],
)
def test_the_composed_flops_equal_what_a_real_run_computes(family, parameters, method, extra, tmp_path, monkeypatch):
    monkeypatch.setenv("ERASE_CACHE_DIR", str(tmp_path / "cache"))
    spec = dict(family=family, parameters=parameters, method=method, set=SMALL + extra)
    run = count_flops.build_run(spec, tmp_path)
    unet = run.pipe.unet
    with count_flops.attention_as_products():
        with FlopCounterMode(display=False) as counter, count_flops.recorded_calls(unet) as setup:
            run.setup()
        setup_counted = unet_flops(counter, unet)
        with FlopCounterMode(display=False) as counter, count_flops.recorded_calls(unet) as training:
            run.train()
    training_counted = unet_flops(counter, unet)

    cost = count_flops.pipeline_call_flops(run.pipe, parameters, asdict(run.config))
    assert cost["graph"] > 2 * cost["forward"] > 0
    assert count_flops.compose(setup, cost) == setup_counted > 0
    assert count_flops.compose(training, cost) == training_counted > 0
    # a forget and a retain graph per step, in one call where the halves are joined
    graphs_per_step = 1 if run.config.joint_forward is not False and method != "explicit" else 2
    assert sum(graph for _, graph in training) == graphs_per_step * run.config.steps


@pytest.mark.slow
def test_the_script_prices_a_full_size_run_and_its_bank(tmp_path, capsys):
    out = tmp_path / "flops.jsonl"
    (record,) = count_flops.main(["--families", "sd15", "--set", *SMALL, "--out", str(out)])
    assert json.loads(out.read_text()) == record
    # the bank: every latent through bank_steps guided sampler steps, prompt and ∅ rows
    bank = record["bank_latents"] * 2 * 2 * record["forward_tflop"] / 1e3
    assert record["setup_pflop"] == pytest.approx(bank, rel=1e-3)
    assert record["bank_latents"] == 41  # the concept and the 40 retain prompts, one latent each
    assert 0.7 < record["forward_tflop"] < 0.9  # SD 1.5 at 512 px: about 0.8 TFLOP a latent
    assert record["calls_per_step"] == {"6": 1.0, "4+bwd": 1.0}  # the frozen forwards in one call, the trained in one
    assert "| sd15 | xattn |" in capsys.readouterr().out
    # a second concept on the same model: the retain list's bank comes from the disk cache
    (again,) = count_flops.main(["--families", "sd15", "--cached-retain", "--set", *SMALL])
    assert again["setup_pflop"] == pytest.approx(bank / 41, rel=1e-3)  # the concept's own latent only
    assert again["train_pflop"] == pytest.approx(record["train_pflop"])
