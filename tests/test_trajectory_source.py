"""``--x-source trajectory``: x_t on the frozen model's sampling paths, with the frozen predictions
recorded there. The recorded targets must be the ones the frozen model gives at those points
(every family, the ∅ rows of the retain batch and the ∅ anchor included), a step must then run no
frozen forward, and the points must not depend on how they were batched."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMScheduler
from safetensors.torch import load_file, save_file
from tiny_models import finished_run, same_weights

import erase.xt_sources.trajectory as trajectory
from erase import loop
from erase.cli import main
from erase.config import TrainConfig

FOLDERS = ["tiny_pipeline_dir", "tiny_sd2_dir", "tiny_sdxl_dir"]  # ε, v-prediction, SDXL's added inputs


def config(folder, output, retain, **kw) -> TrainConfig:
    settings = dict(concept="a drawing of a cat", steps=2, batch_size=6, bank_size=2, bank_steps=4, progress=False)
    settings |= dict(x_source="trajectory", retain_unconditional=0.5)
    return TrainConfig(output=str(output), model=str(folder), retain=str(retain), **settings | kw)


@pytest.fixture()
def retain(write):
    return write("retain.txt", "a drawing of a house\na drawing of a dog\n")


@pytest.mark.parametrize(
    ("folder", "precision"), [(folder, "no") for folder in FOLDERS] + [("tiny_pipeline_dir", "bf16")]
)
def test_recorded_targets_are_the_frozen_models_predictions_there(folder, precision, request, retain, tmp_path):
    """Under bf16 the ∅ the source records under must be the loop's own, encoded outside autocast:
    a bf16-encoded ∅ moved the ∅ rows' targets by up to 0.07 on the default model."""
    run = loop.ErasureRun(config(request.getfixturevalue(folder), tmp_path / "run", retain, mixed_precision=precision))
    run.setup()
    forget, retained = run._draw("forget", 6), run._draw_retain()
    assert forget.frozen is not None and retained.frozen is not None
    assert len(retained.cond.text) == 6 and run._unconditional_rows() == 3  # the ∅ rows are there to check
    batch = {"forget": forget, "retain": retained}
    run._frozen_targets(batch)  # what a step reads: the recorded predictions
    anchors = run.anchors[forget.rows]  # every anchor is ∅ here: the recorded ∅ prediction
    with torch.no_grad():
        wanted = (("concept", forget, None), ("retain_target", retained, None), ("anchor", forget, anchors))
        for name, draw, cond in wanted:
            # under the rows' own conditioning (∅ for the first retain rows), or the anchors
            torch.testing.assert_close(batch[name], run._epsilon(run.frozen, draw, cond), rtol=1e-4, atol=1e-5)


def test_paths_start_from_each_latents_own_seed_and_stay_in_the_timestep_range(tiny_pipeline_dir, retain, tmp_path):
    run = loop.ErasureRun(config(tiny_pipeline_dir, tmp_path / "run", retain, bank_steps=5, seed=3))
    run.setup()
    source = run.x_source
    sampler = DDIMScheduler.from_config(run.pipe.scheduler.config)
    sampler.set_timesteps(5)
    assert source.stop_times.tolist() == sampler.timesteps.tolist()  # 0..999: every sampler step
    starts = source.paths["retain"]["x_t"][:, :, 0]  # (prompts, paths, C, h, w) at the first step
    for p in range(2):
        for k in range(2):
            noise = torch.randn(starts.shape[2:], generator=torch.Generator().manual_seed(3 + 1000 * p + k))
            assert torch.equal(starts[p, k], noise * sampler.init_noise_sigma)

    narrow = loop.ErasureRun(config(tiny_pipeline_dir, tmp_path / "narrow", retain, bank_steps=5, t_min=300, t_max=700))
    narrow.setup()
    allowed = {t for t in sampler.timesteps.tolist() if 300 <= t <= 700}
    assert set(narrow.x_source.stop_times.tolist()) == allowed
    assert {int(t) for _ in range(10) for t in narrow._draw("forget", 6).t} == allowed


@pytest.mark.parametrize("guidance", [5.0, 0.5])  # 0.5: unguided, where ∅ + g·(c − ∅) would differ
def test_each_point_is_a_guided_ddim_step_from_the_one_before(guidance, tiny_pipeline_dir, retain, tmp_path):
    """x_t at sampler step s + 1 is DDIM's step from x_t at s with ∅ + g·(prompt − ∅) of the
    predictions recorded at s (the prompt's alone for g ≤ 1, as the pipelines sample)."""
    run = loop.ErasureRun(config(tiny_pipeline_dir, tmp_path / "run", retain, bank_guidance=guidance))
    run.setup()
    source = run.x_source
    path = source.paths["retain"]
    sampler = DDIMScheduler.from_config(run.pipe.scheduler.config)
    sampler.set_timesteps(4)
    for s, t in enumerate(sampler.timesteps[:-1]):
        x, text, null = (path[name][:, :, s].flatten(0, 1).float() for name in ("x_t", "text", "null"))
        mixed = text if guidance <= 1 else null + guidance * (text - null)
        torch.testing.assert_close(
            sampler.step(mixed, t, x).prev_sample, path["x_t"][:, :, s + 1].flatten(0, 1), rtol=1e-5, atol=1e-6
        )


def test_points_do_not_depend_on_the_sampling_batch(tiny_pipeline_dir, retain, tmp_path, monkeypatch):
    runs = {}
    for batch in (32, 1):  # one latent at a time splits the forget paths too
        monkeypatch.setattr(trajectory, "SAMPLE_BATCH", batch)
        monkeypatch.setenv("ERASE_CACHE_DIR", str(tmp_path / f"cache{batch}"))  # sampled, not read
        runs[batch] = loop.ErasureRun(config(tiny_pipeline_dir, tmp_path / f"b{batch}", retain))
        runs[batch].setup()
    for kind in ("forget", "retain"):
        for name in ("x_t", "text", "null"):
            a, b = runs[32].x_source.paths[kind][name], runs[1].x_source.paths[kind][name]
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("settings", "frozen_batches"),
    [
        (dict(x_source="bank"), 3),  # forget under its prompt and under ∅, retain under its prompt
        (dict(), 0),
        (dict(anchor="a drawing"), 1),  # an anchor prompt's prediction was not recorded
        (dict(method="eupmu", retain_probe="fresh"), 0),  # the fresh probe batch has its targets too
    ],
)
def test_a_step_runs_the_frozen_model_only_for_what_was_not_recorded(
    settings, frozen_batches, tiny_pipeline_dir, retain, tmp_path
):
    run = loop.ErasureRun(config(tiny_pipeline_dir, tmp_path / "run", retain, **{"method": "weighted"} | settings))
    run.setup()
    calls, frozen = [], run.frozen

    def counting(x_t, *args, **kwargs):
        calls.append(len(x_t))
        return frozen(x_t, *args, **kwargs)

    run.frozen = counting
    for run.step in range(2):
        run.train_step()
    assert calls == [frozen_batches * run.config.batch_size] * (2 if frozen_batches else 0)  # one call a step


def test_trains_with_adversarial_rounds_and_logs_finite_losses(tiny_pipeline_dir, retain, tmp_path):
    out = loop.train(
        config(tiny_pipeline_dir, tmp_path / "run", retain, steps=3, adversarial_every=2, adversarial_iterations=2)
    )
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 3 and all(torch.isfinite(torch.tensor([e["loss_forget"], e["loss_retain"]])).all() for e in log)
    assert json.loads((out / "train_config.json").read_text())["x_source"] == "trajectory"


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_the_memory_estimate_is_what_the_points_hold(precision, tiny_pipeline_dir, retain, tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(trajectory, "check_host_memory", asked.append)
    run = loop.ErasureRun(config(tiny_pipeline_dir, tmp_path / "run", retain, mixed_precision=precision))
    run.setup()
    held = sum(t.numel() * t.element_size() for path in run.x_source.paths.values() for t in path.values())
    assert asked == [held]
    assert run.x_source.paths["retain"]["text"].dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)


def test_points_that_would_not_fit_in_host_memory_are_refused_before_sampling(
    tiny_pipeline_dir, retain, tmp_path, monkeypatch
):
    monkeypatch.setattr(trajectory, "available_host_memory", lambda: 10_000)
    sampled = []
    monkeypatch.setattr(trajectory.FrozenTrajectories, "_record", lambda *a, **k: sampled.append(1))
    argv = ["train", "--model", str(tiny_pipeline_dir), "--concept", "a cat", "--retain", str(retain)]
    argv += ["--x-source", "trajectory", "--output", str(tmp_path / "run"), "--no-progress"]
    assert main(argv) == 2
    assert sampled == [] and not (tmp_path / "run").exists()


def test_paths_are_sampled_again_at_half_the_batch_when_memory_runs_out(
    tiny_pipeline_dir, retain, tmp_path, monkeypatch
):
    """As the bank does (tests/test_out_of_memory.py): a UNet that runs out of memory above four
    rows (two paths with their ∅ halves) gets them two at a time, and the points are the same."""
    monkeypatch.setattr(trajectory, "SAMPLE_BATCH", 8)
    monkeypatch.setenv("ERASE_CACHE_DIR", str(tmp_path / "cache"))
    whole = loop.ErasureRun(config(tiny_pipeline_dir, tmp_path / "whole", retain))
    whole.setup()
    monkeypatch.setenv("ERASE_CACHE_DIR", str(tmp_path / "cache2"))  # sampled again, not read
    pipe = whole.pipe.__class__.from_pretrained(tiny_pipeline_dir)
    real, rows, refused = pipe.unet.forward, [], []

    def fits_two_paths(sample, *args, **kwargs):
        if len(sample) > 4:
            refused.append(len(sample))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 MiB.")
        rows.append(len(sample))
        return real(sample, *args, **kwargs)

    monkeypatch.setattr(pipe.unet, "forward", fits_two_paths)
    cut = loop.ErasureRun(config(tiny_pipeline_dir, tmp_path / "cut", retain), pipe)
    cut.setup()
    assert refused == [8, 8] and set(rows) == {4}  # retain's 4 paths at 8, then 4 (8 rows each), then 2
    for kind in ("forget", "retain"):
        for name in ("x_t", "text", "null"):
            torch.testing.assert_close(cut.x_source.paths[kind][name], whole.x_source.paths[kind][name])


def test_a_later_run_reads_the_points_its_settings_share_from_the_disk_cache(
    tiny_pipeline_dir, retain, tmp_path, monkeypatch, capsys
):
    """As the bank's latents: the same model, prompts and settings read the points; another concept
    samples only its own paths; another seed or timestep range samples everything again."""
    monkeypatch.setenv("ERASE_CACHE_DIR", str(tmp_path / "cache"))
    recorded, record = [], trajectory.FrozenTrajectories._record

    def counting(self, unet, conditions, per_prompt, seed, desc, progress):
        recorded.append(desc)
        return record(self, unet, conditions, per_prompt, seed, desc, progress)

    monkeypatch.setattr(trajectory.FrozenTrajectories, "_record", counting)

    def points(name, **kw):
        recorded.clear()
        run = loop.ErasureRun(config(tiny_pipeline_dir, tmp_path / name, retain, **kw))
        run.setup()
        return run.x_source.paths, list(recorded)

    first, sampled = points("first")
    assert sampled == ["forget paths", "retain paths"]
    again, sampled = points("again")
    assert sampled == []
    assert all(torch.equal(again[k][n], first[k][n]) for k in first for n in first[k])
    other, sampled = points("other", concept="a drawing of a tree")
    assert sampled == ["forget paths"] and torch.equal(other["retain"]["text"], first["retain"]["text"])
    assert not torch.equal(other["forget"]["text"], first["forget"]["text"])
    assert points("seed", seed=1)[1] == ["forget paths", "retain paths"]
    # the sampler's timesteps are 751, 501, 251, 1; each range keeps three of them
    assert points("range", t_max=600)[1] == ["forget paths", "retain paths"]
    assert points("other range", t_min=2)[1] == ["forget paths", "retain paths"]
    assert "note:" not in capsys.readouterr().err  # told apart by their keys, not as damaged entries


def test_a_run_on_cached_points_is_bit_identical_and_a_damaged_entry_is_rebuilt(
    tiny_pipeline_dir, retain, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("ERASE_CACHE_DIR", str(tmp_path / "cache"))

    def trained(name):
        return finished_run(loop.train(config(tiny_pipeline_dir, tmp_path / name, retain)))

    fresh_log, fresh = trained("fresh")
    cached_log, cached = trained("cached")
    assert cached_log == fresh_log and same_weights(cached, fresh)
    entries = sorted((tmp_path / "cache" / "paths").glob("*.safetensors"))
    assert len(entries) == 2  # the forget and the retain paths
    entries[0].write_bytes(entries[0].read_bytes()[:100])  # cut short, as by a full disk
    wrong = {name: tensor[:, :1].contiguous() for name, tensor in load_file(str(entries[1])).items()}
    save_file(wrong, str(entries[1]))  # a whole file with other shapes
    capsys.readouterr()
    rebuilt_log, _ = trained("rebuilt")
    assert capsys.readouterr().err.count("note: the cached trajectory points") == 2
    assert rebuilt_log == fresh_log  # sampled again and cached whole:
    assert all(load_file(str(entry))["x_t"].shape[1] == 2 for entry in entries)
