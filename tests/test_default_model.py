"""The embedded default model: a genuine SD pipeline folder, small, loadable by plain diffusers
with no import of our code, and good enough that its own classifier recognises what it draws."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eval.classifiers.digit_style import SHIPPED_FOLDER, load_digit_style_classifier
from pipelines.default import architecture
from pipelines.default.render import STYLES, held_out_mask, render_all
from pipelines.loading import DEFAULT_MODEL_DIR

MB = 1024 * 1024


def test_folder_is_a_stable_diffusion_pipeline_with_safetensors_only():
    index = json.loads((DEFAULT_MODEL_DIR / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["tokenizer"][1] == "CLIPTokenizer"
    weights = [p for p in DEFAULT_MODEL_DIR.rglob("*") if p.suffix in {".safetensors", ".bin", ".ckpt", ".pt"}]
    assert weights and all(p.suffix == ".safetensors" for p in weights)


def test_committed_weights_are_small():
    files = list(DEFAULT_MODEL_DIR.rglob("*.safetensors")) + list(SHIPPED_FOLDER.glob("*.safetensors"))
    assert sum(p.stat().st_size for p in files) <= 15 * MB


def test_shipped_configs_match_the_architecture_module():
    """architecture.py is what the training script builds; it must describe the shipped weights."""
    unet = json.loads((DEFAULT_MODEL_DIR / "unet" / "config.json").read_text())
    vae = json.loads((DEFAULT_MODEL_DIR / "vae" / "config.json").read_text())
    for key, value in architecture.unet_config().items():
        assert unet[key] == (list(value) if isinstance(value, tuple) else value), key
    for key, value in architecture.vae_config().items():
        assert vae[key] == (list(value) if isinstance(value, tuple) else value), key


@pytest.mark.slow
def test_plain_diffusers_loads_it_offline_without_our_code(tmp_path):
    script = f"""
import os, sys
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
from diffusers import StableDiffusionPipeline
pipe = StableDiffusionPipeline.from_pretrained({str(DEFAULT_MODEL_DIR)!r})
image = pipe("a plain drawing of the digit three", num_inference_steps=2,
             generator=torch.Generator().manual_seed(0)).images[0]
ours = sorted({{m.split(".")[0] for m in sys.modules}} & {{"erase", "pipelines", "prompts", "eval"}})
print(image.size, ours)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "(32, 32) []"


def test_classifier_recognises_held_out_renderings():
    data = render_all()
    test = data.subset(held_out_mask(data.source_index))
    classifier = load_digit_style_classifier()
    with torch.no_grad():
        digit_logits, style_logits = classifier(test.images)
    assert classifier.styles == list(STYLES)
    assert (digit_logits.argmax(1) == test.digits).float().mean() >= 0.95
    assert (style_logits.argmax(1) == test.styles).float().mean() >= 0.99


def test_missing_classifier_file_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing; run `python scripts/train_default"):
        load_digit_style_classifier(tmp_path)


@pytest.mark.slow
def test_default_model_draws_what_it_is_asked_for(tmp_path):
    """One image for each of the 40 digit × style prompts at the default sampler settings.
    (The README's figure uses 10 per prompt; see scripts/measure_default_quality.py.)"""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import measure_default_quality

    report = measure_default_quality.main(["--output", str(tmp_path), "--images-per-prompt", "1", "--device", "cpu"])
    assert report["images"] == 40
    assert report["digit_accuracy"] >= 0.9
    assert report["style_accuracy"] >= 0.9
