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

from erase.config import TrainConfig
from erase.config_args import add_dataclass_arguments, dataclass_from_layers, read_config_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a .toml/.yaml/.json file of settings (keys = flag names)")
    add_dataclass_arguments(parser, TrainConfig, layered=True)


def run(args: argparse.Namespace) -> int:
    from erase.loop import train

    file_values = read_config_file(args.config, TrainConfig) if args.config else {}
    config = dataclass_from_layers(TrainConfig, args, file_values)
    output = train(config)
    from pipelines.processes import is_main_process

    if not is_main_process():
        return 0
    print(f"erased model → {output} (log: {output / 'train_log.jsonl'})")
    return 0
