"""Erase a concept from a Stable Diffusion UNet (negative guidance + implicit gradient surgery).

Examples (the embedded default model):

    erase train --concept "a plain drawing of the digit three" --output runs/three
    erase train --forget default/styles/red-forget --output runs/red
    erase train --config run.toml            # keys mirror the flags; flags override the file

The run folder is a diffusers pipeline folder (StableDiffusionPipeline.from_pretrained loads
it) plus train_config.json (the resolved settings) and train_log.jsonl (ℓ_u, ℓ_r, λ per step).
Budget flags are in loss units per step (ε_abs, β_abs; see METHOD.md). Under
`accelerate launch $(which erase) train ...` the loop runs on every GPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from erase.config import TrainConfig, unread_settings
from erase.config_args import add_dataclass_arguments, dataclass_from_layers, read_config_file
from pipelines.lock import MARKER_NAME
from pipelines.ownership import check_outside


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a .toml/.yaml/.json file of settings (keys = flag names)")
    add_dataclass_arguments(parser, TrainConfig, layered=True)


def run(args: argparse.Namespace) -> int:
    from erase.loop import train

    file_values = read_config_file(args.config, TrainConfig) if args.config else {}
    config = dataclass_from_layers(TrainConfig, args, file_values)
    given = set(file_values) | {name for name in vars(args) if hasattr(config, name)}
    from pipelines.processes import is_main_process

    if is_main_process():
        for note in unread_settings(config, given):
            print(note, file=sys.stderr)
    args.output, args.marker_before = config.output, marker_time(config.output)  # for resume_argv
    check_outside(config.output, {"--config": args.config})
    output = train(config)
    if not is_main_process():
        return 0
    print(f"erased model → {output} (log: {output / 'train_log.jsonl'})")
    return 0


def marker_time(output: str | Path) -> tuple[int, int] | None:
    """The marker's identity: every rewrite is a new file (written aside, then renamed)."""
    try:
        info = (Path(output) / MARKER_NAME).stat()
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns


def resume_argv(args: argparse.Namespace, argv: list[str]) -> list[str]:
    """The command that continues an interrupted run: once this run has written its first step
    (it rewrote the folder's marker), with --resume and without --overwrite, which would start
    afresh; before that, the same command."""
    if not hasattr(args, "marker_before"):  # interrupted before the config was read
        return argv
    now = marker_time(args.output)
    if now is None or now == args.marker_before:
        return argv
    return [a for a in argv if a != "--overwrite"] + ([] if "--resume" in argv else ["--resume"])
