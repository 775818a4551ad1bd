"""Every command × every kind of bad input a user can give, as one table.

Each case must exit 2 with one line on stderr that names the problem (the fragment below), no
traceback, and must leave every folder involved exactly as it was: the inputs, the output and the
output's parent (names, sizes, contents and modification times; no stray lock file). Cases with
no prepared output must leave the output path uncreated. Placeholders: {pipe} a tiny pipeline
folder, {run} a tiny finished run, {bad} a folder of bad files made below, {out} the output.
`erase train` cases without --concept/--forget/--config get --concept 'a red circle'.

The hostile cases (HOSTILE) first put something at {out} — a user's folder, one of ours, a
damaged one — and are the ones that used to destroy data: an --overwrite that deleted before
checking, a clean-up that walked the whole tree, a manifest path followed out of the folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from folder_snapshot import snapshot
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import erase.loop as loop
from erase.cli import main
from erase.config import TrainConfig
from erase.export import apply_delta, export_run
from pipelines.generate import GenerateConfig, generate

TRAIN = ["train", "--model", "{pipe}", "--retain", "{bad}/retain.txt", "--steps", "1", "--batch-size", "1"]
TRAIN += ["--bank-size", "1", "--bank-steps", "1", "--output", "{out}", "--no-progress"]
GENERATE = ["generate", "--prompts", "{bad}/ok.txt", "--model", "{pipe}", "--steps", "1", "--device", "cpu"]
GENERATE += ["--output", "{out}", "--no-progress"]
# digit labels the digit-style judge knows (eval refuses a judge blind to the erased label)
EVAL = ["eval", "{run}", "--output", "{out}", "--prompts", "{bad}/digits.csv", "--judge", "digit-style"]
EVAL += ["--erased", "class=three", "--images-per-prompt", "1", "--steps", "1", "--no-progress"]
ATTACK = ["attack", "{run}", "--output", "{out}", "--prompts", "{bad}/labels.csv", "--judge", "digit-style"]
ATTACK += ["--images-per-prompt", "1", "--steps", "1", "--timesteps", "1", "--iterations", "1", "--no-progress"]
EXPORT = ["export", "{run}", "--output", "{out}"]
APPLY = ["apply", "{bad}/delta.safetensors", "--base", "{pipe}", "--output", "{out}"]
SWEEP = ["sweep", "--model", "{pipe}", "--concept", "a red circle", "--retain", "{bad}/retain.txt", "--steps", "1"]
SWEEP += ["--batch-size", "1", "--bank-size", "1", "--bank-steps", "1", "--output", "{out}", "--no-progress"]
SWEEP += ["--prompts", "{bad}/labels.csv", "--judge", "digit-style", "--grid", "none"]


def swap(argv: list[str], old: str, new: str) -> list[str]:
    """``argv`` with one positional replaced (argparse takes no positionals after options)."""
    return [new if a == old else a for a in argv]


LONG_CONCEPT = " ".join(["a very detailed painting of a small red house"] * 10)

CASES = [
    # erase train: the model
    ("train-model-missing", TRAIN + ["--model", "{bad}/nowhere"], "cannot load model"),
    ("train-model-wrong-format", TRAIN + ["--model", "{bad}/notes.txt"], "file of unknown type '.txt'"),
    ("train-model-not-a-pipeline", TRAIN + ["--model", "{bad}"], "not a diffusers pipeline (no model_index.json)"),
    ("train-model-missing-component", TRAIN + ["--model", "{bad}/no-unet"], "incomplete or damaged pipeline folder"),
    (
        "train-single-file-wrong-architecture",
        TRAIN + ["--model", "{bad}/tiny.safetensors", "--model-config", "default"],
        "could not load single-file checkpoint",
    ),
    ("train-pickle-refused", TRAIN + ["--model", "{bad}/model.ckpt"], "pickle checkpoint, which can run code"),
    ("train-model-run-record-damaged", TRAIN + ["--model", "{bad}/damaged-run"], "not an `erase train` record"),
    # erase train: prompt files
    ("train-forget-empty-file", TRAIN + ["--forget", "{bad}/empty.txt"], "no prompts"),
    ("train-forget-mis-encoded", TRAIN + ["--forget", "{bad}/latin1.txt"], "not UTF-8 text"),
    ("train-forget-malformed-csv", TRAIN + ["--forget", "{bad}/quote.csv"], "quote.csv"),
    ("train-forget-csv-no-prompt-column", TRAIN + ["--forget", "{bad}/noprompt.csv"], "no prompt column"),
    # an anchor that is the prompt itself: the loss is zero from the start and nothing is erased
    (
        "train-anchor-is-the-concept",
        TRAIN + ["--concept", "a red circle", "--anchor", "A red  circle"],
        "itself as its",
    ),
    ("train-csv-anchor-is-the-prompt", TRAIN + ["--forget", "{bad}/self-anchor.csv"], "anchor column of"),
    ("train-forget-csv-misspelt-column", TRAIN + ["--forget", "{bad}/typo.csv"], "did you mean 'evaluation_seed'?"),
    ("train-retain-missing", TRAIN + ["--concept", "x", "--retain", "{bad}/gone.txt"], "gone.txt"),
    # erase train: the concept
    ("train-concept-blank", TRAIN + ["--concept", " \u2028 "], "--concept is empty"),
    ("train-concept-too-long", TRAIN + ["--concept", LONG_CONCEPT], "would be truncated"),
    ("train-concept-and-forget", TRAIN + ["--concept", "x", "--forget", "{bad}/ok.txt"], "exactly one of --concept"),
    # erase train: numbers and choices
    ("train-steps-zero", TRAIN + ["--concept", "x", "--steps", "0"], "--steps must be at least 1"),
    ("train-budget-negative", TRAIN + ["--concept", "x", "--retain-budget", "-1"], "--retain-budget must be"),
    ("train-eta-nan", TRAIN + ["--concept", "x", "--eta", "nan"], "--eta must be a finite number"),
    ("train-lr-zero", TRAIN + ["--concept", "x", "--learning-rate", "0"], "--learning-rate must be > 0"),
    ("train-lambda-gain-zero", TRAIN + ["--concept", "x", "--lambda-gain", "0"], "--lambda-gain must be a finite"),
    ("train-lambda-warmup-two", TRAIN + ["--concept", "x", "--lambda-warmup", "2"], "--lambda-warmup must be at"),
    ("train-lora-dropout-one", TRAIN + ["--concept", "x", "--parameters", "lora", "--lora-dropout", "1"], "[0, 1)"),
    ("train-retain-unconditional-above-one", TRAIN + ["--concept", "x", "--retain-unconditional", "1.5"], "[0, 1]"),
    ("train-retain-focus-negative", TRAIN + ["--concept", "x", "--retain-focus", "-0.5"], "[0, 1]"),
    ("train-t-range", TRAIN + ["--concept", "x", "--t-min", "500", "--t-max", "100"], "--t-min ≤ --t-max"),
    (
        "train-mask-delta",
        TRAIN + ["--concept", "x", "--mask", "feasible", "--mask-delta", "0.7"],
        "--mask-delta",
    ),
    ("train-unknown-method", TRAIN + ["--concept", "x", "--method", "magic"], "invalid choice: 'magic'"),
    ("train-not-a-number", TRAIN + ["--concept", "x", "--steps", "ten"], "invalid int value: 'ten'"),
    ("train-resume-and-overwrite", TRAIN + ["--concept", "x", "--resume", "--overwrite"], "give one of them"),
    ("train-config-unknown-key", TRAIN + ["--config", "{bad}/typo.yaml"], "unknown key 'learning_rat'"),
    ("train-no-concept", TRAIN + ["--config", "{bad}/steps.yaml"], "give exactly one of --concept"),
    ("train-config-malformed", TRAIN + ["--config", "{bad}/broken.toml"], "cannot parse"),
    # erase train: the output folder
    ("train-output-is-a-file", TRAIN + ["--concept", "x", "--output", "{bad}/notes.txt"], "is a file; give a folder"),
    ("train-output-exists", TRAIN + ["--concept", "x", "--output", "{run}"], "already exists; use --resume"),
    ("train-resume-nothing", TRAIN + ["--concept", "x", "--resume"], "holds no run to resume"),
    (
        "train-retain-probe-wrong-method",
        TRAIN + ["--concept", "x", "--method", "weighted", "--retain-probe", "fresh"],
        "--retain-probe fresh is for --method eupmu",
    ),
    ("train-lambda-smoothing-one", TRAIN + ["--concept", "x", "--lambda-smoothing", "1"], "a decay in [0, 1)"),
    (
        "train-lambda-smoothing-wrong-method",
        TRAIN + ["--concept", "x", "--method", "eupmu", "--lambda-smoothing", "0.9"],
        "--lambda-smoothing is for --method eupmu-fast",
    ),
    ("train-lora-rank-zero", TRAIN + ["--concept", "x", "--parameters", "lora", "--lora-rank", "0"], "--lora-rank"),
    ("train-half-frozen-fp32", TRAIN + ["--concept", "x", "--half-frozen"], "--mixed-precision bf16"),
    ("train-adversarial-negative", TRAIN + ["--concept", "x", "--adversarial-every", "-1"], "--adversarial-every"),
    ("train-adversarial-lr", TRAIN + ["--concept", "x", "--adversarial-every", "5", "--adversarial-lr", "0"], "> 0"),
    (
        "train-adversarial-sample",
        TRAIN + ["--concept", "x", "--adversarial-every", "5", "--x-source", "sample"],
        "--x-source bank",
    ),
    (
        "train-adversarial-offload",
        TRAIN + ["--concept", "x", "--adversarial-every", "5", "--offload-encoders"],
        "drop --offload-encoders",
    ),
    (
        "train-lora-targets-unknown",
        TRAIN + ["--concept", "x", "--parameters", "lora", "--lora-targets", "attn2.to_z"],
        "--lora-targets 'attn2.to_z' matches no linear or conv layer",
    ),
    (
        "train-resume-other-settings",
        TRAIN + ["--concept", "x", "--resume", "--output", "{run}"],
        "was started with concept='a red circle', not 'x'",
    ),
    # erase generate
    ("generate-prompts-missing", GENERATE + ["--prompts", "{bad}/gone.txt"], "gone.txt"),
    ("generate-prompts-empty", GENERATE + ["--prompts", "{bad}/empty.txt"], "no prompts"),
    ("generate-prompts-binary", GENERATE + ["--prompts", "{bad}/nul.txt"], "NUL byte"),
    ("generate-steps-zero", GENERATE + ["--steps", "0"], "--steps must be at least 1"),
    ("generate-guidance-nan", GENERATE + ["--guidance-scale", "nan"], "--guidance-scale must be a finite number"),
    ("generate-height-odd", GENERATE + ["--height", "30"], "--height must be a positive multiple of 8"),
    ("generate-dtype-unknown", GENERATE + ["--dtype", "float8"], "invalid choice: 'float8'"),
    ("generate-float16-on-cpu", GENERATE + ["--dtype", "float16"], "float16 needs a CUDA device"),
    ("generate-model-missing", GENERATE + ["--model", "{bad}/nowhere"], "cannot load model"),
    ("generate-seed-negative", GENERATE + ["--seed", "-3"], "--seed must be between 0 and 2**63 - 1"),
    # erase export / apply
    ("export-not-a-run", ["export", "{bad}", "--output", "{out}"], "is not a finished `erase train` run folder"),
    ("export-file-not-safetensors", EXPORT + ["--format", "delta"], "must end in .safetensors"),
    ("export-unknown-format", EXPORT + ["--format", "onnx"], "invalid choice: 'onnx'"),
    (
        "export-lora-of-a-non-lora-run",
        swap(EXPORT, "{out}", "{out}.safetensors") + ["--format", "lora"],
        "not LoRA adapters; train with --parameters lora",
    ),
    (
        "apply-delta-keys",
        swap(APPLY, "{bad}/delta.safetensors", "{bad}/delta-keys.safetensors"),
        "is not in the base UNet",
    ),
    ("apply-delta-shapes", swap(APPLY, "{bad}/delta.safetensors", "{bad}/delta-shapes.safetensors"), "shape"),
    (
        "apply-not-a-delta",
        swap(APPLY, "{bad}/delta.safetensors", "{bad}/tiny.safetensors"),
        "not a concept-erase delta",
    ),
    ("apply-damaged-file", swap(APPLY, "{bad}/delta.safetensors", "{bad}/damaged.safetensors"), "damaged.safetensors"),
    # erase attack
    ("attack-run-missing", swap(ATTACK, "{run}", "{bad}/no-run"), "cannot load model"),
    ("attack-tokens-zero", ATTACK + ["--tokens", "0"], "--tokens must be at least 1"),
    ("attack-lr-negative", ATTACK + ["--lr", "-1"], "--lr must be a positive number"),
    ("attack-search-unknown", ATTACK + ["--search", "beam"], "invalid choice: 'beam'"),
    ("attack-erased-label-absent", ATTACK + ["--erased", "class=triangle"], "no such class (it has: circle, square)"),
    ("attack-judge-blind", ATTACK + ["--erased", "class=circle"], "cannot recognise class=circle"),
    # erase eval
    ("eval-run-missing", swap(EVAL, "{run}", "{bad}/no-run"), "cannot load model"),
    ("eval-run-config-damaged", swap(EVAL, "{run}", "{bad}/damaged-run"), "is not an `erase train` record"),
    ("eval-run-config-a-list", swap(EVAL, "{run}", "{bad}/list-run"), "is not an `erase train` record"),
    ("eval-erased-format", EVAL + ["--erased", "colour=red"], "--erased takes AXIS=LABEL"),
    ("eval-erased-axis-twice", EVAL + ["--erased", "class=three,class=five"], "separate concepts with ';'"),
    ("eval-prompts-unlabelled", EVAL + ["--prompts", "{bad}/ok.txt"], "no class or style column"),
    ("eval-images-zero", EVAL + ["--images-per-prompt", "0"], "--images-per-prompt must be at least 1"),
    ("eval-real-images-missing", EVAL + ["--real-images", "{bad}/nowhere"], "is not a folder"),
    ("eval-clip-weights-missing", EVAL + ["--clip-weights", "{bad}/gone.safetensors"], "does not exist"),
    ("eval-clip-weights-pickle", EVAL + ["--clip-weights", "{bad}/model.ckpt"], "pickle"),
    ("eval-judge-unknown", EVAL + ["--judge", "oracle"], "invalid choice: 'oracle'"),
    ("eval-attack-not-an-attack", EVAL + ["--attack", "{bad}"], "is not an `erase attack` folder"),
    # erase prompts
    ("prompts-unknown-list", ["prompts", "default/nothing"], "no such file or shipped list"),
    # values that used to end in a traceback (exit 1)
    (
        "train-config-steps-text",
        TRAIN + ["--config", "{bad}/steps-text.yaml"],
        "steps must be a whole number, got 'ten'",
    ),
    ("train-config-steps-fraction", TRAIN + ["--config", "{bad}/steps-fraction.toml"], "steps must be a whole number"),
    ("train-config-eta-string", TRAIN + ["--config", "{bad}/eta-string.json"], "eta must be a number, got '1.0'"),
    ("train-config-list-for-string", TRAIN + ["--config", "{bad}/concept-list.yaml"], "concept must be a string"),
    ("train-config-unknown-method", TRAIN + ["--config", "{bad}/method.yaml"], "method must be one of"),
    ("train-config-nul-in-path", TRAIN + ["--config", "{bad}/nul-path.json"], "without NUL characters"),
    ("train-config-not-utf8", TRAIN + ["--config", "{bad}/latin1.yaml"], "not UTF-8"),
    ("train-config-fifo", TRAIN + ["--config", "{bad}/fifo.yaml"], "is not a regular file"),
    ("train-seed-too-big", TRAIN + ["--concept", "x", "--seed", str(2**64)], "--seed must be between 0 and 2**63"),
    ("train-bank-steps-above-scheduler", TRAIN + ["--bank-steps", "5000"], "--bank-steps 5000 is more than"),
    ("train-batch-size-huge", TRAIN + ["--batch-size", str(10**9)], "--batch-size must be at most"),
    ("train-forget-fifo", TRAIN + ["--forget", "{bad}/fifo.txt"], "is not a regular file"),
    ("generate-seed-too-big", GENERATE + ["--seed", str(2**64)], "--seed must be between 0 and 2**63"),
    ("generate-steps-above-scheduler", GENERATE + ["--steps", "5000"], "more than this model's scheduler has"),
    ("generate-grid-columns-negative", GENERATE + ["--grid", "--grid-columns", "-1"], "--grid-columns must be at"),
    ("generate-grid-columns-huge", GENERATE + ["--grid", "--grid-columns", str(10**9)], "is more than the 1 images"),
    ("generate-images-per-prompt-huge", GENERATE + ["--images-per-prompt", str(10**9)], "--images-per-prompt must"),
    ("generate-device-absent", GENERATE + ["--device", "mps"], "torch sees no mps device"),
    ("generate-device-index-absent", GENERATE + ["--device", "cuda:7"], "asked for, but torch sees"),
    ("generate-prompts-fifo", GENERATE + ["--prompts", "{bad}/fifo.txt"], "is not a regular file"),
    ("generate-csv-field-too-long", GENERATE + ["--prompts", "{bad}/huge-field.csv"], "huge-field.csv:2: malformed"),
    ("eval-images-per-prompt-huge", EVAL + ["--images-per-prompt", str(10**7)], "images, more than the"),
    ("eval-device-absent", EVAL + ["--device", "mps"], "torch sees no mps device"),
    # results that used to be silently wrong (exit 0)
    ("eval-erased-label-absent", EVAL + ["--erased", "class=triangle"], "no such class (it has: three, five)"),
    ("eval-judge-blind", EVAL + ["--prompts", "{bad}/labels.csv", "--erased", "class=circle"], "cannot recognise"),
    ("apply-delta-nan", swap(APPLY, "{bad}/delta.safetensors", "{bad}/delta-nan.safetensors"), "NaN or inf values"),
    ("apply-delta-int8", swap(APPLY, "{bad}/delta.safetensors", "{bad}/delta-int8.safetensors"), "not floating point"),
    ("apply-delta-empty", swap(APPLY, "{bad}/delta.safetensors", "{bad}/delta-empty.safetensors"), "holds no tensors"),
    ("apply-delta-other-base", APPLY + ["--base", "{bad}/other-pipe"], "was made from base"),
    ("apply-delta-fifo", swap(APPLY, "{bad}/delta.safetensors", "{bad}/fifo.txt"), "is not a regular file"),
    # erase sweep
    ("sweep-grid-unknown-method", SWEEP + ["--grid", "esd"], "unknown method 'esd'"),
    ("sweep-grid-bad-value", SWEEP + ["--grid", "weighted:retain_weight=1,x"], "'x' is not a float"),
    ("sweep-grid-bad-choice", SWEEP + ["--grid", "eupmu:x_source=banks"], "x_source has no choice 'banks'"),
    ("sweep-grid-not-a-knob", SWEEP + ["--grid", "eupmu:seed=1,2"], "SETTING one of"),
    ("sweep-bad-train-setting", SWEEP + ["--steps", "0"], "--grid point none: --steps"),
    ("sweep-retain-missing", SWEEP + ["--retain", "{bad}/gone.txt"], "gone.txt"),
    ("sweep-seeds-repeated", SWEEP + ["--seeds", "1", "1"], "repeats a seed"),
]

USER = "holds files that erase did not write"
HOSTILE = [
    # (id, what is at {out} first, argv, fragment)
    ("generate-into-a-user-folder", "user-folder", GENERATE, USER),
    ("generate-overwrite-a-user-folder", "user-folder", GENERATE + ["--overwrite"], USER),
    ("train-overwrite-a-user-folder", "user-folder", TRAIN + ["--overwrite"], USER),
    ("train-resume-a-user-folder", "user-folder", TRAIN + ["--resume"], USER),
    ("eval-into-a-user-report", "user-folder", EVAL, USER),
    ("attack-into-a-user-folder", "user-folder", ATTACK, USER),
    ("export-overwrite-a-user-folder", "user-folder", EXPORT + ["--format", "diffusers", "--overwrite"], USER),
    ("apply-overwrite-a-user-folder", "user-folder", APPLY + ["--overwrite"], USER),
    ("export-overwrite-a-user-file", "user-file", EXPORT + ["--overwrite"], "was not written by erase"),
    ("apply-overwrite-a-user-file", "user-file", APPLY + ["--format", "single-file", "--overwrite"], "not written by"),
    ("train-overwrite-then-forget-typo", "our-run", TRAIN + ["--overwrite", "--forget", "{bad}/gone.txt"], "gone.txt"),
    ("train-overwrite-then-model-typo", "our-run", TRAIN + ["--overwrite", "--model", "{bad}/nowhere"], "cannot load"),
    ("train-overwrite-its-own-base", "our-run", TRAIN + ["--overwrite", "--model", "{out}"], "lies inside --output"),
    ("train-overwrite-list-inside", "our-run", TRAIN + ["--overwrite", "--forget", "{out}/forget.txt"], "lies inside"),
    ("train-overwrite-config-inside", "our-run", TRAIN + ["--overwrite", "--config", "{out}/run.yaml"], "lies inside"),
    ("train-overwrite-bad-number", "our-run", TRAIN + ["--overwrite", "--bank-steps", "5000"], "--bank-steps 5000"),
    ("train-overwrite-images-folder", "our-images", TRAIN + ["--overwrite"], "holds images from `erase generate`"),
    ("train-resume-damaged-config", "our-run-damaged-config", TRAIN + ["--resume"], "train_config.json is damaged"),
    (
        "train-resume-damaged-checkpoint",
        "our-killed-run-damaged",
        TRAIN + ["--resume", "--steps", "3", "--checkpoint-every", "1"],
        "is damaged",
    ),
    (
        "generate-overwrite-then-model-typo",
        "our-images",
        GENERATE + ["--steps", "2", "--overwrite", "--model", "{bad}/nowhere"],
        "cannot load",
    ),  # noqa: E501
    (
        "generate-overwrite-then-bad-steps",
        "our-images",
        GENERATE + ["--steps", "5000", "--overwrite"],
        "more than this",
    ),
    ("generate-damaged-settings", "our-images-damaged-settings", GENERATE, "generation.json is damaged"),
    ("generate-damaged-marker", "our-images-damaged-marker", GENERATE + ["--overwrite"], "is damaged, so which files"),
    ("eval-overwrite-then-erased-typo", "our-report", EVAL + ["--overwrite", "--erased", "class=x"], "no such class"),
    ("apply-onto-its-own-base", "our-pipeline", APPLY + ["--base", "{out}", "--overwrite"], "lies inside --output"),
    ("sweep-into-a-user-folder", "user-folder", SWEEP, USER),
    ("sweep-into-a-run-folder", "our-run", SWEEP + ["--resume"], "not an `erase sweep`"),
]


@pytest.fixture(scope="module")
def places(tiny_pipeline_dir, tmp_path_factory) -> dict[str, Path]:
    bad = tmp_path_factory.mktemp("bad")
    write = {
        "retain.txt": "a blue square\n",
        "ok.txt": "a red circle\n",
        "notes.txt": "not a model\n",
        "empty.txt": "# only a comment\n\n",
        "quote.csv": 'case_number,prompt,evaluation_seed\n1,"an unclosed quote,3\n',
        "noprompt.csv": "case_number,evaluation_seed\n1,3\n",
        "self-anchor.csv": "case_number,prompt,evaluation_seed,anchor\n1,a blue cat,1,a cat\n"
        "2,a red circle,2,a red circle\n",
        "typo.csv": "case_number,prompt,evaluation_sed\n1,a red circle,3\n",
        "labels.csv": "case_number,prompt,evaluation_seed,class\n1,a red circle,1,circle\n2,a blue square,2,square\n",
        "digits.csv": "case_number,prompt,evaluation_seed,class\n1,a red drawing of the digit three,1,three\n"
        "2,a plain drawing of the digit five,2,five\n",
        "typo.yaml": "concept: x\nlearning_rat: 0.1\n",
        "steps.yaml": "steps: 1\n",
        "broken.toml": "concept = \n",
        "steps-text.yaml": "concept: x\nsteps: ten\n",
        "steps-fraction.toml": 'concept = "x"\nsteps = 2.5\n',
        "eta-string.json": '{"concept": "x", "eta": "1.0"}',
        "concept-list.yaml": "concept: [a red circle, a blue square]\n",
        "method.yaml": "concept: x\nmethod: magic\n",
        "nul-path.json": '{"concept": "x", "retain": "a\\u0000b.txt"}',
        "huge-field.csv": "case_number,prompt,evaluation_seed\n1," + "a" * 140_000 + ",3\n",
    }
    for name, text in write.items():
        (bad / name).write_text(text, encoding="utf-8")
    (bad / "latin1.txt").write_bytes("a café at night\n".encode("latin-1"))
    (bad / "nul.txt").write_bytes(b"a red\x00 circle\n")
    (bad / "latin1.yaml").write_bytes("concept: café\n".encode("latin-1"))
    os.mkfifo(bad / "fifo.txt")
    os.mkfifo(bad / "fifo.yaml")
    torch.save({"state_dict": {}}, bad / "model.ckpt")
    (bad / "damaged.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    shutil.copytree(tiny_pipeline_dir, bad / "no-unet", ignore=shutil.ignore_patterns("unet"))
    (bad / "damaged-run").mkdir()
    (bad / "damaged-run" / "train_config.json").write_text("{cut sho")
    (bad / "list-run").mkdir()
    (bad / "list-run" / "train_config.json").write_text("[1]")  # valid JSON, not a record: once a traceback

    tiny = dict(
        model=str(tiny_pipeline_dir),
        concept="a red circle",
        retain=str(bad / "retain.txt"),
        steps=1,
        batch_size=1,
        bank_size=1,
        bank_steps=1,
        progress=False,
    )
    outside = tmp_path_factory.mktemp("bad-input-outputs")  # beside `bad`, not in it
    run = loop.train(TrainConfig(**tiny, output=str(outside / "bad-input-run")))
    export_run(run, "single-file", bad / "tiny.safetensors")
    export_run(run, "delta", bad / "delta.safetensors")
    with safe_open(str(bad / "delta.safetensors"), "pt") as handle:
        metadata = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    first = sorted(tensors)[0]
    save_file({"renamed." + k: v for k, v in tensors.items()}, str(bad / "delta-keys.safetensors"), metadata)
    save_file(tensors | {first: torch.zeros(3, 3)}, str(bad / "delta-shapes.safetensors"), metadata)
    save_file(
        tensors | {first: torch.full_like(tensors[first], float("nan"))}, str(bad / "delta-nan.safetensors"), metadata
    )
    int8 = {k: torch.arange(v.numel()).reshape(v.shape).to(torch.int8) for k, v in tensors.items()}
    save_file(int8, str(bad / "delta-int8.safetensors"), metadata)
    save_file({}, str(bad / "delta-empty.safetensors"), metadata)
    shutil.copytree(tiny_pipeline_dir, bad / "other-pipe")
    weights = bad / "other-pipe" / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    save_file(state | {first: state[first] + 0.01}, str(weights))  # another base for the same architecture

    ours = outside / "ours"  # folders erase wrote, copied to {out} by the hostile cases
    generate(
        GenerateConfig(
            prompts=str(bad / "ok.txt"),
            output=str(ours / "images"),
            model=str(tiny_pipeline_dir),
            steps=1,
            device="cpu",
            progress=False,
        )
    )  # noqa: E501
    apply_delta(bad / "delta.safetensors", str(tiny_pipeline_dir), ours / "pipeline")
    killed = loop.ErasureRun(
        TrainConfig(**(tiny | {"output": str(ours / "killed"), "checkpoint_every": 1, "steps": 3}))
    )
    killed.setup()
    killed._commit()
    killed._checkpoint(1)
    state_file = next((ours / "killed" / "checkpoints").glob("step-*")) / "trainable.safetensors"
    state_file.write_bytes(state_file.read_bytes()[:100])  # cut short
    report = ours / "report"
    main(
        [
            "eval",
            str(run),
            "--output",
            str(report),
            "--prompts",
            str(bad / "digits.csv"),
            "--judge",
            "digit-style",
            "--images-per-prompt",
            "1",
            "--steps",
            "1",
            "--no-progress",
            "--erased",
            "class=three",
        ]
    )  # noqa: E501
    return {"pipe": tiny_pipeline_dir, "run": run, "bad": bad, "ours": ours}


def prepare(kind: str, out: Path, places: dict[str, Path]) -> None:
    """Put something at {out} before a hostile case runs."""
    ours = places["ours"]
    if kind == "user-folder":
        files = {
            "notes.txt": "mine",
            ".backup.old": "my backup",
            ".draft.tmp": "my draft",
            "sub/.x.tmp": "deep",
            "sub/deep/.y.old": "deeper",
            "0_000.png": "not an image of erase's",
            "report.md": "my report",
            "train_config.json": "{}",
            "model_index.json": "{}",
            "generation.json": "{}",
            "manifest.jsonl": json.dumps({"file": "../victim.txt", "prompt": "a red circle", "seed": 0}) + "\n",
        }
        for name, text in files.items():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_text(text)
        (out.parent / "victim.txt").write_text("outside the output")
    elif kind == "user-file":
        out.write_text("my notes, not a model")
    else:
        source = {"our-run": places["run"], "our-pipeline": ours / "pipeline", "our-report": ours / "report"}
        source |= dict.fromkeys(
            ["our-images", "our-images-damaged-settings", "our-images-damaged-marker"], ours / "images"
        )
        source |= {"our-run-damaged-config": places["run"], "our-killed-run-damaged": ours / "killed"}
        shutil.copytree(source[kind], out, symlinks=True)
        (out / "forget.txt").write_text("a red circle\n")  # a user's file inside our folder
        (out / "run.yaml").write_text("concept: x\n")
        (out.parent / "victim.txt").write_text("outside the output")
        with open(out / "manifest.jsonl", "a") as handle:  # a path that leaves the folder
            handle.write(json.dumps({"file": "../victim.txt", "prompt": "p", "seed": 0}) + "\n")
        if kind == "our-images-damaged-settings":
            (out / "generation.json").write_text('{"steps": 1, "mod')
        if kind == "our-images-damaged-marker":
            (out / ".concept-erase.json").write_text('{"format": "concept-erase-fol')
        if kind == "our-run-damaged-config":
            (out / "train_config.json").write_text('{"concept": "a red')


def run_refused(places, out: Path, argv: list[str], fragment: str, capsys) -> None:
    """Run a case that must be refused; check exit 2, one line, and that no folder changed."""
    values = {k: str(v) for k, v in places.items()} | {"out": str(out)}
    args = [a.format(**values) for a in argv]
    if args[0] == "train" and not {"--concept", "--forget", "--config"} & set(args):
        args += ["--concept", "a red circle"]
    involved = {"out's parent": out.parent} | {name: places[name] for name in ("pipe", "run", "bad", "ours")}
    before = {name: snapshot(folder) for name, folder in involved.items()}
    try:
        code = main(args)
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "\n" not in err and "Traceback" not in err, err
    assert re.match(rf"erase( {args[0]})?: error: ", err) and fragment in err, err
    after = {name: snapshot(folder) for name, folder in involved.items()}
    for name in involved:
        changed = set(before[name].items()) ^ set(after[name].items())
        assert not changed, f"{name} changed: {sorted({entry[0] for entry in changed})}"


@pytest.mark.parametrize(("argv", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_exit_2_and_no_output(places, tmp_path, capsys, argv, fragment):
    out = tmp_path / "out"
    run_refused(places, out, argv, fragment, capsys)
    assert not out.exists()


@pytest.mark.parametrize(("kind", "argv", "fragment"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_hostile_output_is_refused_and_nothing_changes(places, tmp_path, capsys, kind, argv, fragment):
    out = tmp_path / ("out.safetensors" if kind == "user-file" else "out")  # a name a file output may have
    prepare(kind, out, places)
    run_refused(places, out, argv, fragment, capsys)


def test_the_table_covers_every_command_and_at_least_30_cases():
    from erase.cli import COMMANDS

    assert len(CASES) >= 30
    assert {c[1][0] for c in CASES} == set(COMMANDS)
    assert {c[2][0] for c in HOSTILE} == set(COMMANDS) - {"prompts"}  # every command that writes
    assert len({c[0] for c in CASES + HOSTILE}) == len(CASES) + len(HOSTILE)
