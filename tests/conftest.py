"""Shared fixtures: tiny seeded Stable Diffusion components built from configs, offline.

Sizes follow diffusers' own pipeline tests (block_out_channels=(4, 8)-scale). The tokenizer
is built from the BPE vocabulary inside open_clip, so nothing touches a model hub.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_models import save_sd1, save_sd2, save_sdxl, sd1_components

from pipelines.tokenizer import build_clip_tokenizer


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    return build_clip_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def tiny_components(tokenizer) -> dict:
    return sd1_components(tokenizer)


@pytest.fixture(scope="session")
def tokenizer_bang(tmp_path_factory):
    """The OpenCLIP-style tokenizer of SD 2.x and SDXL's second encoder (pads with "!")."""
    return build_clip_tokenizer(tmp_path_factory.mktemp("tokenizer-bang"), pad_token="!")


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory, tokenizer) -> Path:
    """A saved tiny SD pipeline folder (16×16 images, 8×8 latents)."""
    folder = tmp_path_factory.mktemp("tiny-sd")
    save_sd1(folder, tokenizer)
    return folder


@pytest.fixture(scope="session")
def tiny_sd2_dir(tmp_path_factory, tokenizer_bang) -> Path:
    """A saved tiny SD 2.x pipeline folder (v-prediction; 16×16 images)."""
    folder = tmp_path_factory.mktemp("tiny-sd2")
    save_sd2(folder, tokenizer_bang)
    return folder


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory, tokenizer, tokenizer_bang) -> Path:
    """A saved tiny SDXL pipeline folder (two text encoders; 16×16 images)."""
    folder = tmp_path_factory.mktemp("tiny-sdxl")
    save_sdxl(folder, tokenizer, tokenizer_bang)
    return folder


@pytest.fixture()
def no_network(monkeypatch):
    """Every socket connection attempt is recorded and refused; the test asserts the list stays empty."""
    import socket

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[:2])
        raise OSError("network is off in this test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


@pytest.fixture()
def write(tmp_path):
    """write(name, text or bytes) → path inside the test's tmp folder."""

    def _write(name: str, content: str | bytes) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    return _write


@pytest.fixture()
def labelled_prompts(write):
    """An evaluation list of five digit prompts with class and style columns."""
    rows = ["case_number,prompt,evaluation_seed,class,style"]
    cases = [("three", "red"), ("three", "plain"), ("five", "red"), ("five", "plain"), ("one", "plain")]
    rows += [f"{i},a {s} drawing of the digit {c},{10 + i},{c},{s}" for i, (c, s) in enumerate(cases)]
    return write("eval.csv", "\n".join(rows) + "\n")


@pytest.fixture(autouse=True, scope="session")
def _bank_cache(tmp_path_factory):
    """Latent banks go to a per-session folder, never to the user's cache."""
    import os

    os.environ["ERASE_CACHE_DIR"] = str(tmp_path_factory.mktemp("erase-cache"))


def pytest_configure(config):
    """Under pytest-xdist (`-n 2`, the default in pyproject.toml) each worker gets its share of the
    cores, so two workers do not fight over the same two BLAS threads; processes the tests start
    inherit the same share."""
    import os

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1:
        import torch

        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    """Files with slow tests first, each file kept whole: xdist (`--dist loadfile`) hands whole
    files to workers in this order, so the long ones start at once instead of being the last
    thing a worker picks up, and a file's module-scoped fixtures are built once."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: file order otherwise
