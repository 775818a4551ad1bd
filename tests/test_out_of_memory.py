"""Running out of accelerator memory: the latent bank samples again at half the batch, and a
training step that does not fit ends in one line naming the memory levers, before anything is
written. (Found on a GPU: SDXL at the default --batch-size 16 does not fit 140 GB.)"""

from __future__ import annotations

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
