"""SD 1.x, SD 2.x and SDXL through every command, on tiny pipelines built from configs.

The independent expectations here are diffusers' own: the pipeline class it saved a folder with,
the conditioning its pipeline feeds the UNet (captured with a forward hook while it samples), the
weights its single-file loader reads back; and, for loss units, a v-prediction model built to
predict exactly what an ε model predicts, which must train identically.
"""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors.torch import load_file, save_file

from erase import loop
from erase.cli import main
from erase.config import TrainConfig
from pipelines.conditioning import Conditioning
from pipelines.families import FAMILIES, family_of
from pipelines.loading import ModelLoadError, load_pipeline
from pipelines.single_file import save_single_file
from prompts import InputError


def short_run(folder, output, retain, **kw) -> dict:
    """TrainConfig settings of a few-step run on a tiny pipeline folder."""
    settings = dict(concept="a drawing of a cat", steps=2, batch_size=2, bank_size=1, bank_steps=1, progress=False)
    return settings | dict(output=str(output), model=str(folder), retain=str(retain)) | kw


FOLDERS = {"sd1": "tiny_pipeline_dir", "sd2": "tiny_sd2_dir", "sdxl": "tiny_sdxl_dir"}
CLASSES = {"sd1": StableDiffusionPipeline, "sd2": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline}


@pytest.fixture(params=list(FOLDERS))
def family_dir(request):
    return request.param, request.getfixturevalue(FOLDERS[request.param])


def test_each_folder_loads_with_its_own_pipeline_class_and_family(family_dir):
    name, folder = family_dir
    pipe = load_pipeline(folder, device="cpu")
    assert type(pipe) is CLASSES[name] and family_of(pipe).name == name
    if name == "sdxl":  # diffusers' SD1 class would have dropped the second encoder silently
        assert pipe.text_encoder_2 is not None and pipe.tokenizer_2 is not None


def _captured_unet_inputs(pipe, prompt: str) -> list[dict]:
    """The keyword inputs diffusers' own pipeline gives its UNet while it samples ``prompt``."""
    seen = []

    def hook(module, args, kwargs):
        seen.append({k: v for k, v in kwargs.items() if k in ("encoder_hidden_states", "added_cond_kwargs")})

    handle = pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        pipe(prompt=prompt, num_inference_steps=1, guidance_scale=5.0, output_type="latent")
    finally:
        handle.remove()
    return seen


def test_conditioning_is_what_the_pipeline_itself_feeds_its_unet(family_dir):
    """Row 0 is the unconditional input (SDXL: zeros, force_zeros_for_empty_prompt), row 1 the
    prompt; time ids, pooled embedding and text states all as diffusers computes them."""
    name, folder = family_dir
    pipe = load_pipeline(folder, device="cpu")
    expected = _captured_unet_inputs(pipe, "a photo of a cat")[0]
    ours = family_of(pipe).encode(pipe, ["", "a photo of a cat"])
    close = dict(rtol=1e-5, atol=1e-5)  # one prompt there, two here: batched matmuls round differently
    torch.testing.assert_close(ours.text, expected["encoder_hidden_states"], **close)
    assert set(ours.added) == set(expected.get("added_cond_kwargs") or {})
    for key, tensor in ours.added.items():
        torch.testing.assert_close(tensor, expected["added_cond_kwargs"][key], **close)
    assert (ours.text[0].abs().sum() == 0) == (name == "sdxl")


def test_conditioning_rows_join_and_expand():
    text, pooled = torch.arange(24.0).reshape(3, 4, 2), torch.arange(6.0).reshape(3, 2)
    cond = Conditioning(text, {"text_embeds": pooled})
    picked = cond[torch.tensor([2, 0])]
    assert torch.equal(picked.text, text[[2, 0]]) and torch.equal(picked.added["text_embeds"], pooled[[2, 0]])
    joined = Conditioning.cat([cond[:1].expand(2), picked])
    assert len(joined) == 4 and torch.equal(joined.added["text_embeds"][:2], pooled[[0, 0]])
    assert joined.unet_kwargs()["added_cond_kwargs"]["text_embeds"].shape == (4, 2)
    assert "added_cond_kwargs" not in Conditioning(text).unet_kwargs()
    with pytest.raises(ValueError, match="'text_embeds' has 2 rows, the text states 3"):
        Conditioning(text, {"text_embeds": torch.zeros(2, 5)})
    with pytest.raises(ValueError, match="not 3 rows"):
        cond.expand(2)
    alone = Conditioning.cat([picked])
    assert torch.equal(alone.text, picked.text) and torch.equal(alone.added["text_embeds"], pooled[[2, 0]])


def test_conditionings_join_only_with_the_same_text_shape_dtype_and_added_inputs():
    """What decides which frozen predictions share one UNet call: rows of one conditioning
    always can; another text length or width, dtype, or added input (name or width) cannot."""
    text, pooled = torch.zeros(3, 4, 2), torch.zeros(3, 2)
    cond = Conditioning(text, {"text_embeds": pooled})
    assert cond[:1].joinable() == cond[1:].joinable() == cond[:1].expand(5).joinable()
    others = [
        Conditioning(torch.zeros(3, 5, 2), {"text_embeds": pooled}),
        Conditioning(torch.zeros(3, 4, 3), {"text_embeds": pooled}),
        Conditioning(text.double(), {"text_embeds": pooled}),
        Conditioning(text, {"text_embeds": pooled.double()}),
        Conditioning(text, {"text_embeds": torch.zeros(3, 3)}),
        Conditioning(text, {"time_ids": pooled}),
        Conditioning(text),
    ]
    keys = [cond.joinable(), *(other.joinable() for other in others)]
    assert len(set(keys)) == len(keys)
    with pytest.raises(ValueError, match="^cannot join conditionings with different added inputs$"):
        Conditioning.cat([cond, Conditioning(text)])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sd2", "sdxl"])
def test_every_command_end_to_end(name, request, write, tmp_path, no_network):
    """generate (native size) → train (xattn changes only attn2) → export ×3 → apply → eval →
    attack, by the CLI, with no network; the applied delta and both exports give the run's weights back."""
    folder = request.getfixturevalue(FOLDERS[name])
    prompts = write(
        "p.csv",
        "case_number,prompt,evaluation_seed,class\n0,a red drawing of the digit three,1,three\n"
        "1,a plain drawing of the digit five,2,five\n",
    )
    forget = write("forget.txt", "a red drawing of the digit three\n")
    retain = write("retain.txt", "a plain drawing of the digit five\na drawing of a house\n")
    quick = ["--no-progress"]
    images = tmp_path / "images"
    assert main(["generate", "--model", str(folder), "--prompts", str(prompts), "--output", str(images), "--steps", "2",
                 *quick]) == 0  # fmt: skip
    assert {p.stat().st_size > 0 for p in images.glob("*.png")} == {True}
    from PIL import Image

    assert Image.open(next(images.glob("*.png"))).size == (16, 16)  # the UNet's sample size × 2 (VAE)
    run = tmp_path / "run"
    train = ["train", "--model", str(folder), "--forget", str(forget), "--retain", str(retain), "--output", str(run)]
    assert main([*train, "--steps", "2", "--bank-size", "1", "--bank-steps", "2", "--batch-size", "2", *quick]) == 0
    before, after = (load_file(str(f / "unet" / "diffusion_pytorch_model.safetensors")) for f in (folder, run))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".attn2." in k for k in changed)
    assert json.loads((run / "model_index.json").read_text())["_class_name"] == CLASSES[name].__name__

    exports = {fmt: tmp_path / f"export-{fmt}.safetensors" for fmt in ("single-file", "delta")}
    exports["diffusers"] = tmp_path / "export-diffusers"
    for fmt, target in exports.items():
        assert main(["export", str(run), "--format", fmt, "--output", str(target)]) == 0
    applied = tmp_path / "applied"
    assert main(["apply", str(exports["delta"]), "--base", str(folder), "--output", str(applied)]) == 0
    keys = load_file(str(exports["single-file"])).keys()  # the original layout other SD tools read
    assert any(k.startswith(FAMILIES[name].original_marker) for k in keys)
    single = load_pipeline(exports["single-file"], device="cpu", config=folder)
    for pipe in (load_pipeline(applied, device="cpu"), single, load_pipeline(exports["diffusers"], device="cpu")):
        assert type(pipe) is CLASSES[name]
        state = pipe.unet.state_dict()
        assert all(torch.equal(state[k], after[k]) for k in after)

    report = tmp_path / "report"
    evaluate = ["eval", str(run), "--prompts", str(prompts), "--judge", "digit-style", "--output", str(report)]
    assert main([*evaluate, "--images-per-prompt", "1", "--steps", "2", *quick]) == 0
    assert (report / "report.md").is_file()
    for search in ("text-grad", "soft"):  # typed tokens drawn as text; embeddings through the pipeline's inputs
        attack = tmp_path / f"attack-{search}"
        argv = ["attack", str(run), "--prompts", str(prompts), "--judge", "digit-style", "--output", str(attack)]
        argv += ["--search", search, "--timesteps", "1", "--iterations", "1", "--images-per-prompt", "1"]
        assert main([*argv, "--steps", "2", *quick]) == 0
        models = json.loads((attack / "attack.json").read_text())["models"]
        assert set(models) == {"base", "run"} and models["base"]["attacks"] == 1
        # the run is attacked on the target only if the base model's image shows the concept
        assert models["run"]["attacks"] + models["run"]["left_out"] == 1
        assert models["run"]["attacks"] == int(models["base"]["results"][0]["success_before"])
    assert no_network == []


@pytest.mark.parametrize(
    "settings",
    [
        {"x_source": "sample", "method": "explicit"},
        {"x_source": "trajectory", "method": "eupmu", "retain_unconditional": 0.5},
        {"method": "eupmu-fast", "mask": "feasible", "mask_micro_batches": 2, "parameters": "full"},
        {"method": "weighted", "parameters": "noxattn", "loss": "anchor", "anchor": "a drawing"},
        {"method": "none", "mask": "feasible", "mask_micro_batches": 2},
    ],
)
def test_sdxl_trains_with_every_source_balancer_mask_and_parameter_set(settings, tiny_sdxl_dir, write, tmp_path):
    retain = write("retain.txt", "a drawing of a house\na drawing of a dog\n")
    run = loop.train(TrainConfig(**short_run(tiny_sdxl_dir, tmp_path / "run", retain, bank_steps=3, **settings)))
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(torch.isfinite(torch.tensor(entry["loss_forget"])) for entry in log)


def test_sdxl_resume_ends_where_an_uninterrupted_run_ends(tiny_sdxl_dir, write, tmp_path):
    retain = write("retain.txt", "a dog\na house\n")
    settings = dict(model=str(tiny_sdxl_dir), concept="a cat", retain=str(retain), steps=3, checkpoint_every=1)
    settings |= dict(bank_size=1, bank_steps=2, batch_size=2, progress=False)
    whole = loop.train(TrainConfig(output=str(tmp_path / "whole"), **settings))
    cut = loop.ErasureRun(TrainConfig(output=str(tmp_path / "cut"), **settings))
    cut.check_inputs()
    cut.setup()
    for step in range(2):  # two steps, a checkpoint, then the process "dies"
        cut.step = step
        cut.train_step()
        if step == 0:
            cut._commit()
    cut._checkpoint(2)
    resumed = loop.train(TrainConfig(output=str(tmp_path / "cut"), resume=True, **settings))
    a, b = (load_file(str(f / "unet" / "diffusion_pytorch_model.safetensors")) for f in (whole, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], load_file(str(tiny_sdxl_dir / "unet" / "diffusion_pytorch_model.safetensors"))[k])
                   for k in a)  # fmt: skip


def test_single_file_without_model_config_uses_the_shipped_configs_offline(tiny_sdxl_dir, tmp_path, no_network):
    """The family comes from the keys and its standard configs ship with erase: no hub lookup.
    A tiny file does not fit SDXL base's shapes, and the message says so and names the fix."""
    pipe = load_pipeline(tiny_sdxl_dir, device="cpu")
    path = save_single_file(pipe, tmp_path / "tiny-xl.safetensors", layout=FAMILIES["sdxl"].to_original)
    with pytest.raises(ModelLoadError, match="keys are those of Stable Diffusion XL.*--model-config") as info:
        load_pipeline(path, device="cpu")
    assert "\n" not in str(info.value)
    assert type(load_pipeline(path, device="cpu", config=tiny_sdxl_dir)) is StableDiffusionXLPipeline
    assert no_network == []


def test_single_file_and_config_of_different_families_are_refused(tiny_sdxl_dir, tiny_pipeline_dir, tmp_path):
    pipe = load_pipeline(tiny_sdxl_dir, device="cpu")
    path = save_single_file(pipe, tmp_path / "tiny-xl.safetensors", layout=FAMILIES["sdxl"].to_original)
    with pytest.raises(ModelLoadError, match="Stable Diffusion XL checkpoint but --model-config .* Stable Diffusion 1"):
        load_pipeline(path, device="cpu", config=tiny_pipeline_dir)


def test_sd2_file_with_an_sd1_config_is_refused_naming_both(tiny_sd2_dir, tmp_path):
    """SD 1.x and 2.x share a pipeline class; the family, not the class, must match."""
    pipe = load_pipeline(tiny_sd2_dir, device="cpu")
    path = save_single_file(pipe, tmp_path / "tiny-sd2.safetensors", layout=FAMILIES["sd2"].to_original)
    with pytest.raises(ModelLoadError, match="Stable Diffusion 2.x checkpoint but --model-config default is a Stable"):
        load_pipeline(path, device="cpu", config="default")


def test_shipped_configs_are_built_once_when_processes_race(monkeypatch, tmp_path):
    """Two processes building the shipped configs at once: the second rename loses, keeps the
    winner's folder (which the first may be reading) and leaves no temporary folder."""
    import pipelines.loading as loading

    monkeypatch.setenv("ERASE_CACHE_DIR", str(tmp_path))
    real = loading.write_clip_tokenizer_files
    raced = []

    def other_process_first(folder, config=True):
        if not raced:
            raced.append(True)
            loading.shipped_config_folder(FAMILIES["sd2"])  # the other process wins the rename
        return real(folder, config=config)

    monkeypatch.setattr(loading, "write_clip_tokenizer_files", other_process_first)
    target = loading.shipped_config_folder(FAMILIES["sd2"])
    assert (target / "tokenizer" / "vocab.json").is_file() and raced
    assert [p.name for p in target.parent.iterdir()] == [target.name]


def test_resuming_a_v_model_run_from_before_epsilon_units_is_refused(tiny_sd2_dir, write, tmp_path):
    retain = write("retain.txt", "a dog\n")
    settings = short_run(tiny_sd2_dir, tmp_path / "run", retain, concept="a cat", checkpoint_every=1)
    run = loop.ErasureRun(TrainConfig(**settings))
    run.check_inputs()
    run.setup()
    run.step = 0
    run.train_step()
    run._commit()
    run._checkpoint(1)  # a run killed after its first checkpoint
    config_file = tmp_path / "run" / "train_config.json"
    saved = json.loads(config_file.read_text())
    assert saved.pop("loss_units") == "epsilon"
    config_file.write_text(json.dumps(saved))  # as an older erase wrote it
    with pytest.raises(InputError, match="losses in its own units, not ε.*--overwrite"):
        loop.train(TrainConfig(**settings, resume=True))


def test_unet_only_file_is_sent_to_erase_apply(tmp_path):
    path = tmp_path / "unet.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(ModelLoadError, match="only UNet weights.*erase apply"):
        load_pipeline(path, device="cpu")


@pytest.mark.parametrize(
    ("index_class", "title"), [("FluxPipeline", "Flux"), ("StableDiffusion3Pipeline", "Stable Diffusion 3")]
)
def test_unsupported_family_folder_is_one_line_and_exit_2(index_class, title, write, tmp_path, capsys):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": index_class}))
    output = tmp_path / "run"
    assert main(["train", "--model", str(folder), "--concept", "a cat", "--output", str(output), "--method", "none",
                 "--no-progress"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{title} models are not supported" in err[0] and "SDXL" in err[0]
    assert not output.exists()


def test_unsupported_family_single_file_is_named(tmp_path):
    path = tmp_path / "sd3.safetensors"
    save_file({"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(ModelLoadError, match="Stable Diffusion 3 models are not supported"):
        load_pipeline(path, device="cpu")


def _as_v_prediction(pipe) -> StableDiffusionPipeline:
    """The same model declared v-prediction: a hook turns its ε output into v = (ε − σ_t·x_t)/α_t,
    so in ε units it predicts exactly what ``pipe`` predicts."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    alphas = scheduler.alphas_cumprod

    def to_v(module, args, kwargs, output):
        x_t, t = args[0], args[1]
        t = torch.as_tensor(t).reshape(-1).expand(x_t.shape[0]).long()
        cumprod = alphas[t].reshape(-1, 1, 1, 1).to(x_t.dtype)
        eps = output[0]  # a tuple under return_dict=False (the pipeline), else an output object
        v = (eps - (1 - cumprod).sqrt() * x_t) / cumprod.sqrt()
        if isinstance(output, tuple):
            return (v, *output[1:])
        output.sample = v
        return output

    unet = pipe.unet
    unet.register_forward_hook(to_v, with_kwargs=True)
    parts = dict(pipe.components, unet=unet, scheduler=scheduler)
    return StableDiffusionPipeline(**parts)


def test_loss_units_are_the_same_for_epsilon_and_v_prediction(tiny_pipeline_dir, write, tmp_path):
    """One model trained as ε-prediction and as the equivalent v-prediction model, same settings:
    ℓ_u, ℓ_r and λ follow the same path (v units would be up to ~200× larger at high t)."""
    retain = write("retain.txt", "a drawing of a house\na drawing of a dog\n")
    logs = {}
    for kind in ("epsilon", "v"):
        pipe = load_pipeline(tiny_pipeline_dir, device="cpu")
        pipe = _as_v_prediction(pipe) if kind == "v" else pipe
        config = TrainConfig(
            output=str(tmp_path / kind),
            concept="a drawing of a cat",
            retain=str(retain),
            steps=4,
            batch_size=4,
            bank_size=2,
            bank_steps=4,
            t_min=600,
            progress=False,
        )
        run = loop.train(config, pipe)
        logs[kind] = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    for eps, v in zip(logs["epsilon"], logs["v"], strict=True):
        assert v["loss_forget"] == pytest.approx(eps["loss_forget"], rel=1e-3)
        assert v["loss_retain"] == pytest.approx(eps["loss_retain"], rel=1e-3, abs=1e-9)
        assert v["lambda"] == pytest.approx(eps["lambda"], rel=1e-2, abs=1e-3)
    assert logs["epsilon"][0]["loss_forget"] > 0


def test_a_run_trained_from_a_relative_base_works_from_any_directory(tiny_sd2_dir, write, tmp_path, monkeypatch):
    """The run records its base as an absolute path: eval finds it after a change of directory."""
    prompts = write(  # labels the digit-style judge knows (eval refuses a judge blind to the erased label)
        "p.csv",
        "case_number,prompt,evaluation_seed,class\n"
        "0,a drawing of the digit three,1,three\n1,a drawing of the digit five,2,five\n",
    )
    retain = write("retain.txt", "a drawing of the digit five\n")
    monkeypatch.chdir(tiny_sd2_dir.parent)
    run = tmp_path / "run"
    train = [
        "train",
        "--model",
        tiny_sd2_dir.name,
        "--concept",
        "a drawing of the digit three",
        "--retain",
        str(retain),
    ]
    assert main([*train, "--output", str(run), "--steps", "1", "--bank-size", "1", "--bank-steps", "1",
                 "--no-progress"]) == 0  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert json.loads((run / "train_config.json").read_text())["base_model"] == str(tiny_sd2_dir.resolve())
    evaluate = ["eval", str(run), "--prompts", str(prompts), "--judge", "digit-style", "--output", "report"]
    assert main([*evaluate, "--images-per-prompt", "1", "--steps", "1", "--no-progress"]) == 0
    assert (elsewhere / "report" / "report.md").is_file()
