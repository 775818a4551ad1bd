"""Model specs load offline, and every way of pointing at nothing gives one clear error."""

from __future__ import annotations

import shutil

import pytest
import torch
from diffusers import StableDiffusionPipeline

from pipelines.loading import ModelLoadError, load_pipeline, resolve_device, resolve_dtype
from prompts import InputError


def test_local_folder_loads_on_cpu(tiny_pipeline_dir):
    pipe = load_pipeline(tiny_pipeline_dir, device="cpu")
    assert isinstance(pipe, StableDiffusionPipeline)
    assert pipe.unet.device.type == "cpu" and pipe.unet.dtype == torch.float32


def test_bfloat16_on_cpu_casts_weights(tiny_pipeline_dir):
    pipe = load_pipeline(tiny_pipeline_dir, device="cpu", dtype="bfloat16")
    assert pipe.unet.dtype == torch.bfloat16


def test_folder_without_model_index(tmp_path):
    with pytest.raises(ModelLoadError, match="not a diffusers pipeline .no model_index.json"):
        load_pipeline(tmp_path, device="cpu")


def test_folder_with_a_missing_component(tiny_pipeline_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_pipeline_dir, broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(ModelLoadError, match="incomplete or damaged pipeline folder"):
        load_pipeline(broken, device="cpu")


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin"])
def test_pickle_checkpoints_are_refused_without_opt_in(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"not really a pickle")
    with pytest.raises(ModelLoadError, match="pickle checkpoint.*--allow-pickle"):
        load_pipeline(path, device="cpu")


def test_corrupt_single_file_names_the_fix(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="could not read single-file checkpoint"):
        load_pipeline(path, device="cpu")


def test_unknown_file_type(tmp_path):
    path = tmp_path / "weights.onnx"
    path.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="unknown type '.onnx'"):
        load_pipeline(path, device="cpu")


def test_uncached_hub_id_says_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError) as info:
        load_pipeline("someone/not-a-real-model-xyz", device="cpu")
    message = str(info.value)
    assert "no file or folder" in message and "not complete in the Hugging Face cache" in message
    assert "\n" not in message


def test_nonsense_spec_is_not_looked_up_in_the_cache():
    with pytest.raises(ModelLoadError, match="not a hub id"):
        load_pipeline("./no/such/dir/", device="cpu")


def test_device_and_dtype_errors():
    with pytest.raises(InputError, match="float16 needs a CUDA device"):
        resolve_dtype("float16", torch.device("cpu"))
    with pytest.raises(InputError, match="unknown dtype"):
        resolve_dtype("float8", torch.device("cpu"))
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="torch sees no cuda device"):
            resolve_device("cuda")


def test_single_file_round_trip_gives_the_same_weights(tiny_pipeline_dir, tmp_path):
    from pipelines.single_file import save_single_file

    folder = load_pipeline(tiny_pipeline_dir, device="cpu")
    path = save_single_file(folder, tmp_path / "tiny.safetensors")
    single = load_pipeline(path, device="cpu", config=tiny_pipeline_dir)
    for name in ("unet", "vae", "text_encoder"):
        ours, theirs = getattr(folder, name).state_dict(), getattr(single, name).state_dict()
        assert ours.keys() == theirs.keys(), name
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name


def test_single_file_without_a_config_folder_names_the_flag(tiny_pipeline_dir, tmp_path):
    from pipelines.single_file import save_single_file

    path = save_single_file(load_pipeline(tiny_pipeline_dir, device="cpu"), tmp_path / "tiny.safetensors")
    with pytest.raises(ModelLoadError, match="pass --model-config with a diffusers folder"):
        load_pipeline(path, device="cpu")


def test_bad_config_folder_for_a_single_file(tiny_pipeline_dir, tmp_path):
    from pipelines.single_file import save_single_file

    path = save_single_file(load_pipeline(tiny_pipeline_dir, device="cpu"), tmp_path / "tiny.safetensors")
    with pytest.raises(ModelLoadError, match="--model-config .* is not a diffusers pipeline folder"):
        load_pipeline(path, device="cpu", config=tmp_path)
