"""What erase may delete, and what it must not: ownership markers, --overwrite of our own folders
with a user's files in them, deltas that cannot be right, a training step that ruins the weights,
damaged caches, Ctrl-C, and a property test over random user files and refused commands."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from folder_snapshot import snapshot
from safetensors.torch import load_file, save_file

from erase.cli import main
from erase.export import export_run
from pipelines.lock import LOCK_NAME, MARKER_NAME
from pipelines.ownership import OwnedFolder, read_marker


@pytest.fixture()
def retain_file(write):
    return write("retain.txt", "a blue square\n")


@pytest.fixture()
def prompts_file(write):
    return write("prompts.txt", "a red circle\na blue square\n")


def train_argv(pipe: Path, retain: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--model", str(pipe), "--concept", "a red circle", "--retain", str(retain), "--steps", "2",
        "--batch-size", "1", "--bank-size", "1", "--bank-steps", "1", "--output", str(out), "--no-progress", *extra,
    ]  # fmt: skip


def generate_argv(pipe: Path, prompts: Path, out: Path, *extra: str) -> list[str]:
    return [
        "generate", "--prompts", str(prompts), "--model", str(pipe), "--steps", "1", "--device", "cpu",
        "--output", str(out), "--no-progress", *extra,
    ]  # fmt: skip


def test_overwrite_deletes_only_recorded_names_and_follows_no_manifest_path(tiny_pipeline_dir, prompts_file, tmp_path):
    out = tmp_path / "images"
    assert main(generate_argv(tiny_pipeline_dir, prompts_file, out)) == 0
    assert read_marker(out)["names"][:2] == ["manifest.jsonl", "generation.json"]
    victim = tmp_path / "victim.txt"
    victim.write_text("outside")
    (out / "notes.txt").write_text("mine")
    (out / ".backup.old").write_text("mine too")
    with open(out / "manifest.jsonl", "a") as handle:
        handle.write(json.dumps({"file": "../victim.txt", "prompt": "p", "seed": 0}) + "\n")
    old = (out / "0_000.png").stat().st_mtime_ns
    assert main(generate_argv(tiny_pipeline_dir, prompts_file, out, "--steps", "2", "--overwrite")) == 0
    assert victim.read_text() == "outside"
    assert (out / "notes.txt").read_text() == "mine" and (out / ".backup.old").read_text() == "mine too"
    assert (out / "0_000.png").stat().st_mtime_ns != old  # redrawn with the new settings
    assert not (out / LOCK_NAME).exists()  # the lock file goes with the command


def test_generate_refuses_to_draw_over_a_users_file_in_its_own_folder(tiny_pipeline_dir, write, tmp_path, capsys):
    out = tmp_path / "images"
    one = write("one.txt", "a red circle\n")
    assert main(generate_argv(tiny_pipeline_dir, one, out)) == 0
    (out / "1_000.png").write_text("a user's file that happens to have the next image's name")
    two = write("two.txt", "a red circle\na blue square\n")
    assert main(generate_argv(tiny_pipeline_dir, two, out)) == 2
    assert "already holds '1_000.png', which erase did not write" in capsys.readouterr().err
    assert (out / "1_000.png").read_text().startswith("a user's file")


def test_train_overwrite_keeps_a_users_file_and_writes_a_loadable_run(tiny_pipeline_dir, retain_file, tmp_path):
    out = tmp_path / "run"
    assert main(train_argv(tiny_pipeline_dir, retain_file, out)) == 0
    (out / "my-notes.md").write_text("mine")
    assert main(train_argv(tiny_pipeline_dir, retain_file, out, "--overwrite", "--seed", "1")) == 0
    assert (out / "my-notes.md").read_text() == "mine"
    assert json.loads((out / "train_config.json").read_text())["seed"] == 1
    assert sorted(read_marker(out)["names"]) == sorted(
        ["train_config.json", "train_log.jsonl", "model_index.json", "unet", "vae", "text_encoder", "tokenizer"]
        + ["scheduler"]
    )
    assert not (out / "checkpoints").exists() and not (out / ".pipeline").exists()


def test_the_run_records_its_base_as_an_absolute_path(tiny_pipeline_dir, retain_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_pipeline_dir.parent)
    out = tmp_path / "run"
    argv = train_argv(Path(tiny_pipeline_dir.name), retain_file, out)
    assert main(argv) == 0
    config = json.loads((out / "train_config.json").read_text())
    assert config["base_model"] == str(tiny_pipeline_dir.resolve()) and len(config["base_fingerprint"]) == 16


def test_a_step_that_ruins_the_weights_stops_the_run(tiny_pipeline_dir, retain_file, tmp_path, capsys):
    """A huge λ step and cap give finite losses but inf/NaN weights; the run stops (exit 2, one
    line) and never writes a pipeline. Pinned to `eupmu`: it moves λ right after the step, so
    the check after the step is what stops it (the default `eupmu-fast` moves λ at the next
    step's start, and that step's loss check stops the same run: "loss became nan at step 2")."""
    out = tmp_path / "run"
    argv = train_argv(tiny_pipeline_dir, retain_file, out, "--steps", "6", "--lambda-lr", "1e300", "--method", "eupmu")
    assert main([*argv, "--lambda-max", "1e300", "--learning-rate", "1e30", "--max-grad-norm", "0"]) == 2
    err = "\n".join(line for line in capsys.readouterr().err.splitlines() if not line.startswith("note:"))
    assert "\n" not in err.strip() and "became NaN or inf" in err, err
    assert not (out / "model_index.json").exists()


def test_a_damaged_latent_bank_is_rebuilt_with_a_note(tiny_pipeline_dir, retain_file, tmp_path, capsys):
    banks = Path(os.environ["ERASE_CACHE_DIR"]) / "banks"
    before = set(banks.glob("*.safetensors")) if banks.exists() else set()
    argv = train_argv(tiny_pipeline_dir, retain_file, tmp_path / "a", "--seed", "4242")
    assert main(argv) == 0
    made = sorted(set(banks.glob("*.safetensors")) - before)
    assert made
    for path in made:
        path.write_bytes(path.read_bytes()[:50])  # cut short, as a full disk would
    assert main(train_argv(tiny_pipeline_dir, retain_file, tmp_path / "b", "--seed", "4242")) == 0
    assert capsys.readouterr().err.count("is damaged") == len(made)
    assert all(load_file(str(p))["latents"].numel() for p in made)
    a, b = (load_file(str(tmp_path / r / "unet" / "diffusion_pytorch_model.safetensors")) for r in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the rebuilt bank is the same bank


def test_a_cache_file_that_cannot_be_read_is_left_alone(tmp_path, monkeypatch, capsys):
    """An I/O error says nothing about the file (it may be whole, or another user's on a shared
    cache): it is sampled again and kept. Running out of host memory loading it is this run's
    error and propagates; only a file safetensors cannot parse counts as damaged."""
    from safetensors import SafetensorError

    from pipelines import latents

    path = tmp_path / "entry.safetensors"
    save_file({"latents": torch.ones(2, 1)}, str(path))

    def fails(error):
        def load(_):
            raise error

        return load

    io_error = SafetensorError("Error while deserializing header: I/O error: Input/output error (os error 5)")
    monkeypatch.setattr(latents, "load_file", fails(io_error))
    assert latents.read_cached(path, "latent bank", lambda _: True) is None
    assert "could not read the cached latent bank" in capsys.readouterr().err and path.is_file()
    monkeypatch.setattr(latents, "load_file", fails(RuntimeError("DefaultCPUAllocator: can't allocate memory")))
    with pytest.raises(RuntimeError, match="allocate"):
        latents.read_cached(path, "latent bank", lambda _: True)
    assert path.is_file()
    monkeypatch.setattr(
        latents, "load_file", fails(SafetensorError("Error while deserializing header: header too large"))
    )
    assert latents.read_cached(path, "latent bank", lambda _: True) is None
    assert "is damaged (Error while deserializing header: header too large)" in capsys.readouterr().err
    assert not path.exists()


@pytest.mark.parametrize("x_source", ["bank", "trajectory"])
def test_a_full_cache_disk_does_not_stop_the_run(
    x_source, tiny_pipeline_dir, retain_file, tmp_path, monkeypatch, capsys
):
    """The cache saves later runs time; failing to write it must not cost this run its result.
    safetensors reports a full disk only in its error's text."""
    from safetensors import SafetensorError

    from pipelines import latents

    def disk_full(_tensors, _path):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    cache = tmp_path / "cache"
    monkeypatch.setenv("ERASE_CACHE_DIR", str(cache))
    monkeypatch.setattr(latents, "save_file", disk_full)
    argv = train_argv(tiny_pipeline_dir, retain_file, tmp_path / "run", "--x-source", x_source)
    assert main([*argv, "--steps", "1"]) == 0
    err = capsys.readouterr().err
    what = {"bank": "latent bank", "trajectory": "trajectory points"}[x_source]
    assert f"could not cache the {what} in {cache}" in err and "No space left on device" in err, err
    assert not [f for f in cache.rglob("*") if f.is_file()]  # no half-written temp file left behind
    assert (tmp_path / "run" / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_only_each_machines_first_process_writes_the_cache(tmp_path, monkeypatch):
    """Every process draws the same bank; one copy per machine is enough."""
    import types

    from pipelines import latents

    state = types.SimpleNamespace(is_local_main_process=False)
    monkeypatch.setattr(latents, "process_state", lambda: state)
    latents.write_cached(tmp_path / "a.safetensors", "latent bank", {"latents": torch.ones(1)})
    assert not (tmp_path / "a.safetensors").exists()
    state.is_local_main_process = True
    latents.write_cached(tmp_path / "a.safetensors", "latent bank", {"latents": torch.ones(1)})
    assert torch.equal(load_file(str(tmp_path / "a.safetensors"))["latents"], torch.ones(1))


def test_overwrite_refuses_to_take_a_users_files_inside_a_folder_erase_wrote(
    tiny_pipeline_dir, retain_file, tmp_path, capsys
):
    """An exported pipeline's unet/ is ours, but a file a user put inside it is not: --overwrite
    of the export, and of a finished run, refuse in one line before anything is deleted, and go
    ahead once the file is moved away."""
    run = tmp_path / "run"
    assert main(train_argv(tiny_pipeline_dir, retain_file, run)) == 0
    exported = tmp_path / "exported"
    export = ["export", str(run), "--format", "diffusers", "--output", str(exported)]
    assert main(export) == 0
    mine = [exported / "unet" / "notes.txt", exported / "unet" / "mine" / "a.txt", run / "unet" / "notes.txt"]
    for path in mine:
        path.parent.mkdir(exist_ok=True)
        path.write_text("keep me")
    capsys.readouterr()
    before = snapshot(exported)
    assert main([*export, "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "'unet/mine/a.txt', 'unet/notes.txt' inside a folder erase wrote" in err, err
    assert snapshot(exported) == before
    assert main([*train_argv(tiny_pipeline_dir, retain_file, run), "--overwrite"]) == 2
    assert "'unet/notes.txt' inside a folder erase wrote" in capsys.readouterr().err
    assert all(path.read_text() == "keep me" for path in mine)
    for path in mine[:2]:
        path.unlink()
    (exported / "unet" / "mine").rmdir()
    assert main([*export, "--overwrite"]) == 0
    assert (exported / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_a_delta_from_another_base_needs_force(tiny_pipeline_dir, retain_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_argv(tiny_pipeline_dir, retain_file, out)) == 0
    delta = export_run(out, "delta", tmp_path / "d.safetensors")
    other = tmp_path / "other"
    import shutil

    shutil.copytree(tiny_pipeline_dir, other)
    weights = other / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    key = next(k for k in state if ".attn2." in k)
    save_file(state | {key: state[key] * 2}, str(weights))
    argv = ["apply", str(delta), "--base", str(other), "--output", str(tmp_path / "applied")]
    assert main(argv) == 2
    assert "was made from base" in capsys.readouterr().err
    assert main([*argv, "--force"]) == 0
    assert main(["apply", str(delta), "--base", str(tiny_pipeline_dir), "--output", str(tmp_path / "same")]) == 0
    a = load_file(str(tmp_path / "same" / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a second apply over our own output is allowed with --overwrite, and only with it
    assert main(["apply", str(delta), "--base", str(tiny_pipeline_dir), "--output", str(tmp_path / "same")]) == 2
    again = ["apply", str(delta), "--base", str(tiny_pipeline_dir), "--output", str(tmp_path / "same"), "--overwrite"]
    assert main(again) == 0


def _interrupt(argv: list[str], env: dict, when) -> tuple[int, str]:
    """Start ``erase`` in a child process, send SIGINT once ``when()`` is true, return (code, stderr)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "erase.cli", *argv],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    deadline = time.time() + 60
    while not when() and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    said = [line for line in err.splitlines() if not line.startswith("note:")]  # a setting's note, not the exit's
    return process.returncode, "\n".join(said).strip()


def test_an_interrupted_sweep_names_the_command_that_continues_it(tmp_path, monkeypatch, capsys):
    """Once the sweep has written its folder, continuing it needs --resume (the same command is
    refused: the folder holds a sweep); before that, the same command."""
    import erase.sweep

    out = tmp_path / "sweep"
    argv = ["sweep", "--concept", "a red circle", "--output", str(out), "--grid", "none"]

    def interrupted(writes: bool):
        def run_sweep(sweep, train):
            if writes:
                OwnedFolder.inspect(out, "sweep").claim(["sweep.json"])
            raise KeyboardInterrupt

        return run_sweep

    for writes in (False, True):
        monkeypatch.setattr(erase.sweep, "run_sweep", interrupted(writes))
        assert main(argv) == 130
        err = capsys.readouterr().err.strip()
        assert err.startswith("erase sweep: interrupted; to continue, run: erase sweep --concept"), err
        assert ("--resume" in err) == writes, err


@pytest.mark.slow
def test_ctrl_c_exits_130_with_one_line_and_the_resume_command(tiny_pipeline_dir, retain_file, tmp_path):
    """SIGINT during start-up (importing torch) and during the run: exit 130, one line, and the
    command that continues (with --resume once the run has written its first step)."""
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = tmp_path / "run"
    argv = train_argv(tiny_pipeline_dir, retain_file, out, "--steps", "100000", "--checkpoint-every", "1")
    start = time.time()
    code, err = _interrupt(argv, env, lambda: time.time() - start > 0.3)
    assert code == 130 and "\n" not in err and err.startswith("erase train: interrupted; to continue, run: erase"), err
    assert not out.exists()  # nothing was written yet, so the hint is the same command
    assert "--resume" not in err
    code, err = _interrupt(argv, env, lambda: (out / "checkpoints").exists())
    assert code == 130 and "\n" not in err and "Traceback" not in err, err
    assert err.endswith("--resume"), err


USER_FILES = [
    "notes.txt",
    ".backup.old",
    ".draft.tmp",
    "0_000.png",
    "report.md",
    "report.html",
    "train_config.json",
    "model_index.json",
    "manifest.jsonl",
    "generation.json",
    "sub/.x.tmp",
    "sub/deep/.model_index.json.abcd1234.old",
    "unet/config.json",
]


def test_property_random_user_files_and_refused_commands_change_nothing(tiny_pipeline_dir, retain_file, tmp_path):
    """For random sets of a user's files in the output folder (and beside it), every command
    aimed at it, with or without --overwrite/--resume, is refused and nothing changes."""
    rng = random.Random(11)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    run = tmp_path / "run"
    assert main(train_argv(tiny_pipeline_dir, retain_file, run)) == 0
    delta = export_run(run, "delta", tmp_path / "d.safetensors")
    commands = [
        lambda out: generate_argv(tiny_pipeline_dir, prompts, out),
        lambda out: train_argv(tiny_pipeline_dir, retain_file, out),
        lambda out: ["export", str(run), "--format", "diffusers", "--output", str(out)],
        lambda out: ["apply", str(delta), "--base", str(tiny_pipeline_dir), "--output", str(out)],
        lambda out: ["eval", str(run), "--output", str(out), "--prompts", str(prompts), "--erased", "class=x"],
    ]
    for trial in range(25):
        out = tmp_path / f"trial-{trial}" / "out"
        for name in rng.sample(USER_FILES, rng.randint(1, 5)):
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_text(f"user data {rng.random()}")
        (out.parent / "beside.txt").write_text("beside")
        argv = rng.choice(commands)(out) + rng.choice([[], ["--overwrite"], ["--resume"]])
        if argv[0] != "train" and "--resume" in argv:
            argv.remove("--resume")
        before = snapshot(out.parent)
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code
        assert code == 2, argv
        assert snapshot(out.parent) == before, argv


def test_a_recorded_name_must_be_a_plain_name(tmp_path):
    folder = OwnedFolder(tmp_path / "x", "images")
    for bad in ["../escape", "a/b", "..", "", MARKER_NAME, "nul\x00"]:
        with pytest.raises(ValueError):
            folder.claim([bad])
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / MARKER_NAME).write_text(
        json.dumps({"format": "concept-erase-folder/1", "kind": "images", "names": ["../up"]})
    )
    from prompts import InputError

    with pytest.raises(InputError, match="is damaged"):
        OwnedFolder.inspect(tmp_path / "x", "images")
