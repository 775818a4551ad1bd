"""`--parameters lora` (erase/lora.py): the adapters are trained with the base switched back on
by turning them off, merged into the saved UNet by the LoRA formula, exported in diffusers' and
kohya's layouts that diffusers' own loader reads back to the run's images, and merged by apply."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny_models import sd1_components

import erase.loop as loop
from erase.cli import main
from erase.config import TrainConfig
from erase.lora import LORA_FILE, LoraAdapters
from erase.params import PARAMETER_SETS


def _settings(**kw):
    return {"lora_rank": 2, "lora_alpha": None, "lora_dropout": 0.0, "lora_targets": None, "seed": 0} | kw


def _unet_weights(folder):
    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


@pytest.fixture(scope="module")
def lora_run(tiny_pipeline_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora")
    (tmp / "retain.txt").write_text("a blue square\na green cat\n")
    config = TrainConfig(
        model=str(tiny_pipeline_dir),
        concept="a red circle",
        retain=str(tmp / "retain.txt"),
        output=str(tmp / "run"),
        parameters="lora",
        lora_rank=2,
        lora_alpha=3.0,
        steps=3,
        batch_size=2,
        bank_size=1,
        bank_steps=1,
        progress=False,
        learning_rate=5e-2,
    )
    return loop.train(config)


def test_adapters_off_give_the_base_output_while_training_moves_the_adapters(tokenizer):
    unet: UNet2DConditionModel = sd1_components(tokenizer)["unet"].train()
    base = copy.deepcopy(unet).eval()
    trainable = LoraAdapters().attach(unet, _settings())
    with torch.no_grad():
        for _, param in trainable.named:
            param.add_(0.5)  # B ≠ 0: the adapters now change the output
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([5, 900])
    text = torch.randn(2, 77, unet.config.cross_attention_dim)
    with torch.no_grad():
        want = base(x, t, encoder_hidden_states=text).sample
    assert torch.equal(trainable.frozen(x, t, encoder_hidden_states=text).sample, want)
    assert all(p.requires_grad for _, p in trainable.named)  # switched back on, trainable again
    assert not any(p.requires_grad for n, p in unet.named_parameters() if ".lora_" not in n)
    out = unet(x, t, encoder_hidden_states=text).sample
    assert not torch.allclose(out, want)
    out.sum().backward()
    assert all(p.grad is not None for _, p in trainable.named)


def test_the_saved_unet_is_the_base_plus_the_scaled_adapter_product(lora_run, tiny_pipeline_dir):
    metadata, adapters = safe_open(str(lora_run / LORA_FILE), "pt").metadata(), load_file(str(lora_run / LORA_FILE))
    assert (metadata["rank"], metadata["alpha"]) == ("2", "3.0")
    assert json.loads(metadata["targets"]) == ["attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"]
    base, run = _unet_weights(tiny_pipeline_dir), _unet_weights(lora_run)
    modules = sorted({k.rpartition(".lora_")[0] for k in adapters})
    assert len(modules) == 4 * 4  # 4 cross-attention blocks in the tiny UNet × 4 projections
    for module in modules:
        a, b = adapters[f"{module}.lora_A.weight"], adapters[f"{module}.lora_B.weight"]
        assert a.shape[0] == 2 and b.abs().max() > 0  # trained away from B = 0
        want = base[f"{module}.weight"] + 1.5 * (b @ a)  # scale α/r = 3/2
        torch.testing.assert_close(run[f"{module}.weight"], want, rtol=0, atol=1e-6)
    changed = {k for k in base if not torch.equal(base[k], run[k])}
    assert changed == {f"{m}.weight" for m in modules}  # biases and every other tensor untouched


def _images(pipe, prompt="a red circle"):
    generator = torch.Generator().manual_seed(3)
    return pipe(prompt, num_inference_steps=2, generator=generator, output_type="np").images


@pytest.mark.parametrize("fmt", ["lora", "lora-kohya"])
def test_an_exported_lora_loaded_by_diffusers_gives_the_runs_images(lora_run, tiny_pipeline_dir, tmp_path, fmt):
    out = tmp_path / f"{fmt}.safetensors"
    assert main(["export", str(lora_run), "--format", fmt, "--output", str(out)]) == 0
    pipe = DiffusionPipeline.from_pretrained(tiny_pipeline_dir)
    before = _images(pipe)
    pipe.load_lora_weights(str(out))
    got = _images(pipe)
    want = _images(DiffusionPipeline.from_pretrained(lora_run))
    assert abs(got - before).max() > 1e-3  # the LoRA does something
    assert abs(got - want).max() < 1e-4
    with safe_open(str(out), "pt") as handle:
        assert handle.metadata()["format"] == "pt"  # what diffusers and transformers expect


def test_kohya_keys_are_the_layout_a1111_and_comfyui_read(lora_run, tmp_path):
    out = tmp_path / "kohya.safetensors"
    main(["export", str(lora_run), "--format", "lora-kohya", "--output", str(out)])
    blocks = [
        "down_blocks_1_attentions_0",
        "mid_block_attentions_0",
        "up_blocks_0_attentions_0",
        "up_blocks_0_attentions_1",
    ]
    want = set()
    for block in blocks:
        for proj in ("to_q", "to_k", "to_v", "to_out_0"):
            name = f"lora_unet_{block}_transformer_blocks_0_attn2_{proj}"
            want |= {f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"}
    tensors = load_file(str(out))
    assert set(tensors) == want
    assert all(float(v) == 3.0 for k, v in tensors.items() if k.endswith(".alpha"))
    adapters = load_file(str(lora_run / LORA_FILE))
    name = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    kohya = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    assert torch.equal(tensors[f"{kohya}.lora_down.weight"], adapters[f"{name}.lora_A.weight"])
    assert torch.equal(tensors[f"{kohya}.lora_up.weight"], adapters[f"{name}.lora_B.weight"])
    with safe_open(str(out), "pt") as handle:  # kohya's trainer metadata, which A1111 files LoRAs by
        metadata = handle.metadata()
    assert metadata["ss_base_model_version"] == "sd_v1" and metadata["ss_network_module"] == "networks.lora"
    assert float(metadata["ss_network_alpha"]) == 3.0 and int(metadata["ss_network_dim"]) > 0


@pytest.mark.parametrize("fmt", ["lora", "lora-kohya"])
def test_apply_merges_a_lora_into_the_base_exactly_and_refuses_another_base(
    lora_run, tiny_pipeline_dir, tmp_path, capsys, fmt
):
    lora_file = tmp_path / "erase.safetensors"
    main(["export", str(lora_run), "--format", fmt, "--output", str(lora_file)])
    out = tmp_path / "applied"
    assert main(["apply", str(lora_file), "--base", str(tiny_pipeline_dir), "--output", str(out)]) == 0
    a, b = _unet_weights(out), _unet_weights(lora_run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # another base: its weights differ in the layers the LoRA adapts
    assert main(["apply", str(lora_file), "--base", str(lora_run), "--output", str(tmp_path / "wrong")]) == 2
    assert "holds other weights" in capsys.readouterr().err
    assert not (tmp_path / "wrong").exists()
    with safe_open(str(lora_file), "pt") as handle:
        metadata, tensors = handle.metadata(), {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    save_file(tensors, str(tmp_path / "damaged.safetensors"), metadata=metadata | {"targets": "{not json"})
    argv = ["apply", str(tmp_path / "damaged.safetensors"), "--base", str(tiny_pipeline_dir), "--output"]
    assert main([*argv, str(tmp_path / "wrong")]) == 2
    assert "has damaged metadata" in capsys.readouterr().err and not (tmp_path / "wrong").exists()
    zero = {k: torch.zeros_like(v) if ("lora_B" in k or "lora_up" in k) else v for k, v in tensors.items()}
    save_file(zero, str(tmp_path / "zero.safetensors"), metadata=metadata)  # merges to the base itself
    assert main(["apply", str(tmp_path / "zero.safetensors"), "--base", str(tiny_pipeline_dir), "--output",
                 str(tmp_path / "wrong")]) == 2  # fmt: skip
    assert "changed no weight" in capsys.readouterr().err and not (tmp_path / "wrong").exists()
    # the run's own adapters file (peft's layout, no "unet." prefix): diffusers would load nothing
    assert main(["apply", str(lora_run / LORA_FILE), "--base", str(tiny_pipeline_dir), "--output",
                 str(tmp_path / "wrong")]) == 2  # fmt: skip
    assert "export them first" in capsys.readouterr().err and not (tmp_path / "wrong").exists()


def test_lora_targets_registry_entry_names_the_merged_weights():
    chosen = PARAMETER_SETS["lora"]
    settings = {"lora_targets": "attn2.to_k,to_out.0"}
    assert chosen.changes("up_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight", settings)
    assert chosen.changes("mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0.weight", settings)
    assert not chosen.changes("mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0.bias", settings)
    assert not chosen.changes("mid_block.attentions.0.transformer_blocks.0.attn2.to_q.weight", settings)
    assert not chosen.changes("down_blocks.0.resnets.0.conv1.weight", settings)


@pytest.mark.parametrize("folder", ["tiny_sd2_dir", "tiny_sdxl_dir"])
def test_sd2_and_sdxl_lora_exports_load_in_diffusers(folder, request, tmp_path, write):
    """SD 2.x (v-prediction, the OpenCLIP text encoder) and SDXL (two encoders, added
    conditioning, other block layouts): both files load into the base and give the run's images."""
    base = request.getfixturevalue(folder)
    retain = write("retain.txt", "a drawing of a house\n")
    run = loop.train(
        TrainConfig(
            model=str(base),
            concept="a drawing of a dog",
            retain=str(retain),
            output=str(tmp_path / "run"),
            parameters="lora",
            steps=2,
            batch_size=2,
            bank_size=1,
            bank_steps=2,
            progress=False,
            learning_rate=5e-2,
        )
    )
    want = _images(DiffusionPipeline.from_pretrained(run), "a drawing of a dog")
    before = _images(DiffusionPipeline.from_pretrained(base), "a drawing of a dog")
    assert abs(want - before).max() > 1e-3  # the run changed the images, so a dropped key would show
    for fmt in ("lora", "lora-kohya"):
        out = tmp_path / f"{fmt}.safetensors"
        assert main(["export", str(run), "--format", fmt, "--output", str(out)]) == 0
        pipe = DiffusionPipeline.from_pretrained(base)
        pipe.load_lora_weights(str(out))
        assert abs(_images(pipe, "a drawing of a dog") - want).max() < 1e-4, fmt
