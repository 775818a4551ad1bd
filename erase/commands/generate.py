"""Draw images for every prompt of a list, into a folder with a JSONL manifest.

Image k of a record uses seed (record seed + k), so reruns, other batch sizes and other
devices' random streams do not change it. Rerunning the same command resumes: finished images
are kept and skipped. Example (the embedded default model, 40 prompts):

    erase generate --prompts default/digits --output outputs/digits --grid
"""

from __future__ import annotations

import argparse
from pathlib import Path

from erase.config_args import add_dataclass_arguments, dataclass_from_args
from pipelines.generate import MANIFEST_NAME, GenerateConfig, generate
from pipelines.processes import is_main_process


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, GenerateConfig)


def run(args: argparse.Namespace) -> int:
    config = dataclass_from_args(GenerateConfig, args)
    result = generate(config)
    if not is_main_process():
        return 0
    rate = f", {result.images_per_second:.2f} images/s" if result.generated else ""
    rate += f", {result.processes} processes" if result.processes > 1 else ""
    print(
        f"{result.generated} images generated, {result.skipped} already there "
        f"({result.seconds:.1f} s{rate}) → {Path(config.output) / MANIFEST_NAME}"
    )
    if result.grid is not None:
        print(f"grid of {result.total} images → {result.grid}")
    return 0
