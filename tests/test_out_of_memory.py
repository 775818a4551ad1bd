"""Running out of accelerator memory: the latent bank samples again at half the batch, and a
training step that does not fit ends in one line naming the memory levers, before anything is
written. (Found on a GPU: SDXL at the default --batch-size 16 does not fit 140 GB.)"""

from __future__ import annotations

import pytest
import torch

import erase.loop as loop
from erase.cli import main
from pipelines.latents import generate_latents
from pipelines.loading import load_pipeline

CUDA_OOM = "CUDA out of memory. Tried to allocate 80.00 MiB. GPU 0 has a total capacity of 139.80 GiB"


class FitsTwo:
    """A pipeline that runs out of memory above two prompts at a time (what a GPU does above
    the batch it fits); everything else is the real pipeline's."""

    def __init__(self, pipe):
        self.pipe, self.batches = pipe, []

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def __call__(self, prompt, **kwargs):
        self.batches.append(len(prompt))
        if len(prompt) > 2:
            raise torch.OutOfMemoryError(CUDA_OOM)
        return self.pipe(prompt=prompt, **kwargs)


def test_bank_halves_its_batch_until_it_fits(tiny_pipeline_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ERASE_CACHE_DIR", str(tmp_path / "cache"))
    pipe = load_pipeline(str(tiny_pipeline_dir), device="cpu")
    settings = dict(prompts=["a red circle", "a blue square", "a green cat"], per_prompt=2, seed=0, steps=1)
    fits = FitsTwo(pipe)
    bank = generate_latents(fits, guidance=5.0, batch_size=8, progress=False, **settings)
    assert fits.batches == [6, 4, 2, 2, 2]  # 6 jobs: all at once, then halved until two fit
    monkeypatch.setenv("ERASE_CACHE_DIR", str(tmp_path / "cache2"))
    direct = generate_latents(pipe, guidance=5.0, batch_size=2, progress=False, **settings)
    assert bank.shape == (3, 2, *bank.shape[2:]) and torch.allclose(bank, direct, atol=1e-6)


def test_a_step_that_does_not_fit_names_the_levers(tiny_pipeline_dir, write, tmp_path, monkeypatch, capsys):
    def out_of_memory(self):
        raise torch.OutOfMemoryError(CUDA_OOM)

    monkeypatch.setattr(loop.ErasureRun, "train_step", out_of_memory)
    retain = write("retain.txt", "a blue square\n")
    argv = ["train", "--model", str(tiny_pipeline_dir), "--concept", "a red circle", "--retain", str(retain)]
    argv += ["--bank-size", "1", "--bank-steps", "1", "--output", str(tmp_path / "run"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "out of memory" in err[0], err
    assert all(lever in err[0] for lever in ("--batch-size", "--gradient-checkpointing", "--half-frozen")), err
    assert not (tmp_path / "run").exists()


def test_a_bank_that_does_not_fit_one_image_ends_in_one_line_naming_the_cache(
    tiny_pipeline_dir, write, tmp_path, monkeypatch, capsys
):
    """Found on a GPU: SDXL's bank under a 16 GB cap failed at batch 1 with accelerate's bare
    "No executable batch size found, reached zero" and a traceback. Lowering --batch-size or
    checkpointing does not help there; the bank's disk cache does."""
    monkeypatch.setenv("ERASE_CACHE_DIR", str(tmp_path / "cache"))
    pipe = load_pipeline(str(tiny_pipeline_dir), device="cpu")
    calls = []

    def never_fits(self, prompt, **kwargs):
        calls.append(len(prompt))
        raise torch.OutOfMemoryError(CUDA_OOM)

    monkeypatch.setattr(type(pipe), "__call__", never_fits)
    retain = write("retain.txt", "a blue square\n")
    argv = ["train", "--model", str(tiny_pipeline_dir), "--concept", "a red circle", "--retain", str(retain)]
    argv += ["--bank-size", "2", "--bank-steps", "1", "--output", str(tmp_path / "run"), "--no-progress"]
    assert main(argv) == 2
    assert calls == [2, 2, 2, 2, 2, 1]  # the forget bank's 2 images at 32, 16, 8, 4, 2, then 1, then given up
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "out of memory (the latent bank does not fit even one image at a time)" in err[0], err
    assert str(tmp_path / "cache") in err[0] and "--batch-size" not in err[0], err
    assert not (tmp_path / "run").exists()


def test_a_bank_error_other_than_memory_is_not_reported_as_memory(tiny_pipeline_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ERASE_CACHE_DIR", str(tmp_path / "cache"))
    pipe = load_pipeline(str(tiny_pipeline_dir), device="cpu")

    def broken(self, prompt, **kwargs):
        raise RuntimeError("something else")

    monkeypatch.setattr(type(pipe), "__call__", broken)
    with pytest.raises(RuntimeError, match="something else") as caught:
        generate_latents(pipe, ["a red circle"], per_prompt=1, seed=0, steps=1, guidance=5.0, progress=False)
    assert not isinstance(caught.value, torch.OutOfMemoryError)
