"""Frozen predictions from the trainable UNet itself (erase/frozen.py): the same numbers as a
deep copy of the original, for one call and for a whole run, with only the trained tensors kept."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import UNet2DConditionModel
from tiny_models import TEXT_WIDTH, finished_run, same_weights, sd1_components

import erase.loop as loop
import erase.params as params
from erase.config import TrainConfig
from erase.frozen import FrozenOriginal, FrozenRequest
from erase.params import PARAMETER_SETS
from pipelines.conditioning import Conditioning


def _unet(tokenizer, dropout: float = 0.0) -> UNet2DConditionModel:
    """The suite's tiny SD 1.x UNet, with dropout where a test needs it."""
    torch.manual_seed(0)
    return UNet2DConditionModel.from_config(sd1_components(tokenizer)["unet"].config, dropout=dropout)


def _xattn(unet) -> set[str]:
    return {n for n, _ in unet.named_parameters() if PARAMETER_SETS["xattn"].keep(n)}


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 700]), torch.randn(2, 5, TEXT_WIDTH, generator=g)


def test_frozen_output_equals_a_deep_copy_of_the_original_after_training_moved_the_weights(tokenizer):
    unet = _unet(tokenizer, dropout=0.5).train()  # dropout: the frozen call must run in eval mode, as a copy does
    assert unet.config.dropout == 0.5
    names = _xattn(unet)
    copy_of_original = copy.deepcopy(unet).eval().requires_grad_(False)
    frozen = FrozenOriginal(unet, names)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if name in names:
                param.add_(torch.randn_like(param))
    x, t, text = _inputs()
    with torch.no_grad():
        want = copy_of_original(x, t, encoder_hidden_states=text).sample
    got = frozen(x, t, encoder_hidden_states=text).sample
    assert torch.equal(got, want)
    assert unet.training  # back in train mode, trained values back in place
    with torch.no_grad():
        trained = unet.eval()(x, t, encoder_hidden_states=text).sample
    assert not torch.allclose(trained, want)
    assert not got.requires_grad


def test_only_the_trained_tensors_are_kept(tokenizer):
    unet = _unet(tokenizer)
    names = _xattn(unet)
    frozen = FrozenOriginal(unet, names)
    assert set(frozen.originals) == names
    whole = sum(p.numel() * p.element_size() for p in unet.parameters())
    trained = {n: p for n, p in unet.named_parameters() if n in names}
    assert frozen.nbytes() == sum(4 * p.numel() for p in trained.values()) < whole / 4  # float32: 4 bytes each
    frozen.hold_in(torch.bfloat16)
    assert frozen.nbytes() == sum(2 * p.numel() for p in trained.values())
    assert all(frozen.originals[n].dtype == torch.bfloat16 for n in names)
    with pytest.raises(KeyError, match="not parameters of this UNet"):
        FrozenOriginal(unet, {*names, "no.such.weight"})
    for name, param in unet.named_parameters():
        if name in names:
            assert frozen.originals[name].data_ptr() != param.data_ptr()  # a copy, not the live tensor


def _short_run(tiny_pipeline_dir, retain, output, **kw) -> TrainConfig:
    settings = dict(steps=3, batch_size=2, bank_size=1, bank_steps=1, progress=False, learning_rate=1e-2)
    return TrainConfig(
        model=str(tiny_pipeline_dir), concept="a red circle", retain=str(retain), output=str(output), **settings | kw
    )


def test_a_run_is_bit_identical_to_one_with_a_deep_copied_frozen_unet(tiny_pipeline_dir, write, tmp_path, monkeypatch):
    retain = write("retain.txt", "a blue square\na green cat\n")
    for method, parameters in (("eupmu", "full"), ("explicit", "xattn")):

        def run(name, method=method, parameters=parameters):
            config = _short_run(tiny_pipeline_dir, retain, tmp_path / name, method=method, parameters=parameters)
            return finished_run(loop.train(config))

        new = run(f"new-{method}")
        with monkeypatch.context() as patch:
            deep_copy = lambda unet, names: copy.deepcopy(unet).requires_grad_(False).eval()  # noqa: E731
            patch.setattr(params, "FrozenOriginal", deep_copy)
            old = run(f"old-{method}")
        assert new[0] == old[0] and same_weights(new[1], old[1])


class _CountingCalls:
    """The frozen model, counting its calls and the latents each took."""

    def __init__(self, frozen):
        self.frozen, self.batches = frozen, []

    def __call__(self, x_t, *args, **kwargs):
        self.batches.append(len(x_t))
        return self.frozen(x_t, *args, **kwargs)


@pytest.mark.parametrize("folder", ["tiny_pipeline_dir", "tiny_sd2_dir", "tiny_sdxl_dir"])
def test_a_steps_frozen_targets_are_one_call_giving_the_separate_calls_values(folder, request, write, tmp_path):
    """The forget draw under its anchor and its prompt and the retain draw under its prompt (∅ in
    its first rows) go through the frozen UNet as one call of 3B latents; each row must get what a
    call of its own gives, bit for bit on a CPU, in the right place."""
    retain = write("retain.txt", "a blue square\na green cat\n")
    cfg = TrainConfig(
        model=str(request.getfixturevalue(folder)),
        concept="a red circle",
        anchor="a yellow circle",
        retain=str(retain),
        retain_unconditional=0.5,
        output=str(tmp_path / "run"),
        batch_size=4,
        bank_size=2,
        bank_steps=1,
        progress=False,
    )
    run = loop.ErasureRun(cfg)
    run.setup()
    with torch.no_grad():  # θ away from the original, so a trainable call in its place would show
        for p in run.params:
            p.add_(torch.randn_like(p))
    batch = {"forget": run._draw("forget", 4), "retain": run._draw_retain()}
    run.frozen = counting = _CountingCalls(run.frozen)
    run._frozen_targets(batch)
    assert counting.batches == [12]
    forget, retained = batch["forget"], batch["retain"]
    with torch.no_grad():
        want = {
            "anchor": run._epsilon(counting.frozen, forget, run.anchors[forget.rows]),
            "concept": run._epsilon(counting.frozen, forget),
            "retain_target": run._epsilon(counting.frozen, retained),
        }
    assert len({tuple(v.flatten()[:4].tolist()) for v in want.values()}) == 3  # three different predictions
    for name, value in want.items():
        assert torch.equal(batch[name], value), name


def test_frozen_requests_that_cannot_be_joined_go_in_calls_of_their_own(tiny_pipeline_dir, write, tmp_path):
    """A conditioning of another text length cannot be concatenated with the others: it gets its
    own call, the joinable ones still share one, and every value lands in its request's place."""
    retain = write("retain.txt", "a blue square\n")
    cfg = TrainConfig(
        model=str(tiny_pipeline_dir), concept="a red circle", retain=str(retain), output=str(tmp_path / "run"),
        batch_size=2, bank_size=1, bank_steps=1, progress=False,
    )  # fmt: skip
    run = loop.ErasureRun(cfg)
    run.setup()
    draw = run._draw("forget", 2)
    short = Conditioning(draw.cond.text[:, :5])  # the first five tokens only: another text length
    requests = [FrozenRequest(draw), FrozenRequest(draw, short), FrozenRequest(draw, run.anchors[draw.rows])]
    run.frozen = counting = _CountingCalls(run.frozen)
    got = run._frozen_epsilons(requests)
    assert sorted(counting.batches) == [2, 4]
    with torch.no_grad():
        want = [run._epsilon(counting.frozen, r.draw, r.cond) for r in requests]
    assert not torch.equal(want[0], want[1])  # the short text changes the prediction
    for index, (value, expected) in enumerate(zip(got, want, strict=True)):
        assert torch.equal(value, expected), index


def test_a_run_with_joined_frozen_calls_is_bit_identical_to_one_calling_them_one_by_one(
    tiny_pipeline_dir, write, tmp_path, monkeypatch
):
    retain = write("retain.txt", "a blue square\na green cat\n")
    joined = finished_run(loop.train(_short_run(tiny_pipeline_dir, retain, tmp_path / "joined")))
    joint_call = loop.ErasureRun._frozen_epsilons

    def one_by_one(self, requests):
        return [joint_call(self, [request])[0] for request in requests]

    monkeypatch.setattr(loop.ErasureRun, "_frozen_epsilons", one_by_one)
    apart = finished_run(loop.train(_short_run(tiny_pipeline_dir, retain, tmp_path / "apart")))
    assert joined[0] == apart[0] and same_weights(joined[1], apart[1])
