"""Every command × every kind of bad input a user can give, as one table.

Each case must exit 2 with one line on stderr that names the problem (the fragment below), no
traceback, and must leave its output path uncreated. Placeholders: {pipe} a tiny pipeline
folder, {run} a tiny finished run, {bad} a folder of bad files made below, {out} the output.
`erase train` cases without --concept/--forget/--config get --concept 'a red circle'.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import erase.loop as loop
from erase.cli import main
from erase.config import TrainConfig
from erase.export import export_run

TRAIN = ["train", "--model", "{pipe}", "--retain", "{bad}/retain.txt", "--steps", "1", "--batch-size", "1"]
TRAIN += ["--bank-size", "1", "--bank-steps", "1", "--output", "{out}", "--no-progress"]
GENERATE = ["generate", "--prompts", "{bad}/ok.txt", "--model", "{pipe}", "--steps", "1", "--device", "cpu"]
GENERATE += ["--output", "{out}", "--no-progress"]
EVAL = ["eval", "{run}", "--output", "{out}", "--prompts", "{bad}/labels.csv", "--judge", "digit-style"]
EVAL += ["--images-per-prompt", "1", "--steps", "1", "--no-progress"]
EXPORT = ["export", "{run}", "--output", "{out}"]
APPLY = ["apply", "{bad}/delta.safetensors", "--base", "{pipe}", "--output", "{out}"]


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
    # erase train: prompt files
    ("train-forget-empty-file", TRAIN + ["--forget", "{bad}/empty.txt"], "no prompts"),
    ("train-forget-mis-encoded", TRAIN + ["--forget", "{bad}/latin1.txt"], "not UTF-8 text"),
    ("train-forget-malformed-csv", TRAIN + ["--forget", "{bad}/quote.csv"], "quote.csv"),
    ("train-forget-csv-missing-column", TRAIN + ["--forget", "{bad}/noseed.csv"], "missing column(s) evaluation_seed"),
    ("train-forget-csv-extra-column", TRAIN + ["--forget", "{bad}/extra.csv"], "unknown column 'colour'"),
    ("train-retain-missing", TRAIN + ["--concept", "x", "--retain", "{bad}/gone.txt"], "gone.txt"),
    # erase train: the concept
    ("train-concept-blank", TRAIN + ["--concept", " \u2028 "], "--concept is empty"),
    ("train-concept-too-long", TRAIN + ["--concept", LONG_CONCEPT], "would be truncated"),
    ("train-concept-and-forget", TRAIN + ["--concept", "x", "--forget", "{bad}/ok.txt"], "exactly one of --concept"),
    # erase train: numbers and choices
    ("train-steps-zero", TRAIN + ["--concept", "x", "--steps", "0"], "--steps must be at least 1"),
    ("train-budget-negative", TRAIN + ["--concept", "x", "--retain-budget", "-1"], "--retain-budget must be"),
    ("train-eta-nan", TRAIN + ["--concept", "x", "--eta", "nan"], "--eta must be a finite number"),
    ("train-lr-zero", TRAIN + ["--concept", "x", "--learning-rate", "0"], "--learning-rate and --lambda-lr"),
    ("train-t-range", TRAIN + ["--concept", "x", "--t-min", "500", "--t-max", "100"], "--t-min ≤ --t-max"),
    (
        "train-mask-delta",
        TRAIN + ["--concept", "x", "--mask", "feasible", "--mask-delta", "0.7"],
        "--mask-delta",
    ),
    ("train-unknown-method", TRAIN + ["--concept", "x", "--method", "magic"], "invalid choice: 'magic'"),
    ("train-not-a-number", TRAIN + ["--concept", "x", "--steps", "ten"], "invalid int value: 'ten'"),
    ("train-config-unknown-key", TRAIN + ["--config", "{bad}/typo.yaml"], "unknown key 'learning_rat'"),
    ("train-no-concept", TRAIN + ["--config", "{bad}/steps.yaml"], "give exactly one of --concept"),
    ("train-config-malformed", TRAIN + ["--config", "{bad}/broken.toml"], "cannot parse"),
    # erase train: the output folder
    ("train-output-is-a-file", TRAIN + ["--concept", "x", "--output", "{bad}/notes.txt"], "is a file; give a folder"),
    ("train-output-exists", TRAIN + ["--concept", "x", "--output", "{run}"], "already exists; use --resume"),
    ("train-resume-nothing", TRAIN + ["--concept", "x", "--resume"], "holds no run to resume"),
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
    ("generate-seed-negative", GENERATE + ["--seed", "-3"], "--seed must be ≥ 0"),
    # erase export / apply
    ("export-not-a-run", ["export", "{bad}", "--output", "{out}"], "is not a finished `erase train` run folder"),
    ("export-unknown-format", EXPORT + ["--format", "onnx"], "invalid choice: 'onnx'"),
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
    # erase eval
    ("eval-run-missing", swap(EVAL, "{run}", "{bad}/no-run"), "cannot load model"),
    ("eval-run-config-damaged", swap(EVAL, "{run}", "{bad}/damaged-run"), "is not valid JSON"),
    ("eval-erased-format", EVAL + ["--erased", "colour=red"], "--erased takes AXIS=LABEL"),
    ("eval-prompts-unlabelled", EVAL + ["--prompts", "{bad}/ok.txt"], "no class or style column"),
    ("eval-images-zero", EVAL + ["--images-per-prompt", "0"], "--images-per-prompt must be at least 1"),
    ("eval-real-images-missing", EVAL + ["--real-images", "{bad}/nowhere"], "is not a folder"),
    ("eval-clip-weights-missing", EVAL + ["--clip-weights", "{bad}/gone.safetensors"], "does not exist"),
    ("eval-clip-weights-pickle", EVAL + ["--clip-weights", "{bad}/model.ckpt"], "pickle"),
    ("eval-judge-unknown", EVAL + ["--judge", "oracle"], "invalid choice: 'oracle'"),
    # erase prompts
    ("prompts-unknown-list", ["prompts", "default/nothing"], "no such file or shipped list"),
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
        "noseed.csv": "case_number,prompt\n1,a red circle\n",
        "extra.csv": "case_number,prompt,evaluation_seed,colour\n1,a red circle,3,red\n",
        "labels.csv": "case_number,prompt,evaluation_seed,class\n1,a red circle,1,circle\n2,a blue square,2,square\n",
        "typo.yaml": "concept: x\nlearning_rat: 0.1\n",
        "steps.yaml": "steps: 1\n",
        "broken.toml": "concept = \n",
    }
    for name, text in write.items():
        (bad / name).write_text(text, encoding="utf-8")
    (bad / "latin1.txt").write_bytes("a café at night\n".encode("latin-1"))
    (bad / "nul.txt").write_bytes(b"a red\x00 circle\n")
    torch.save({"state_dict": {}}, bad / "model.ckpt")
    (bad / "damaged.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    shutil.copytree(tiny_pipeline_dir, bad / "no-unet", ignore=shutil.ignore_patterns("unet"))
    (bad / "damaged-run").mkdir()
    (bad / "damaged-run" / "train_config.json").write_text("{cut sho")

    run = loop.train(
        TrainConfig(
            model=str(tiny_pipeline_dir),
            concept="a red circle",
            retain=str(bad / "retain.txt"),
            output=str(bad.parent / "bad-input-run"),
            steps=1,
            batch_size=1,
            bank_size=1,
            bank_steps=1,
            progress=False,
        )
    )
    export_run(run, "single-file", bad / "tiny.safetensors")
    export_run(run, "delta", bad / "delta.safetensors")
    with safe_open(str(bad / "delta.safetensors"), "pt") as handle:
        metadata = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    first = sorted(tensors)[0]
    save_file({"renamed." + k: v for k, v in tensors.items()}, str(bad / "delta-keys.safetensors"), metadata)
    save_file(tensors | {first: torch.zeros(3, 3)}, str(bad / "delta-shapes.safetensors"), metadata)
    return {"pipe": tiny_pipeline_dir, "run": run, "bad": bad}


def _snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*")}


@pytest.mark.parametrize(("argv", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_exit_2_and_no_output(places, tmp_path, capsys, argv, fragment):
    out = tmp_path / "out"
    values = {k: str(v) for k, v in places.items()} | {"out": str(out)}
    args = [a.format(**values) for a in argv]
    if args[0] == "train" and not {"--concept", "--forget", "--config"} & set(args):
        args += ["--concept", "a red circle"]
    before = {name: _snapshot(places[name]) for name in ("run", "bad")}
    try:
        code = main(args)
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "\n" not in err and "Traceback" not in err, err
    assert re.match(rf"erase( {args[0]})?: error: ", err) and fragment in err, err
    assert not out.exists()
    assert {name: _snapshot(places[name]) for name in ("run", "bad")} == before, "an input was changed"


def test_the_table_covers_every_command_and_at_least_30_cases():
    from erase.cli import COMMANDS

    assert len(CASES) >= 30
    assert {c[1][0] for c in CASES} == set(COMMANDS)
    assert len({c[0] for c in CASES}) == len(CASES)
