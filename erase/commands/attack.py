"""Attack erased models with adversarial prompts (UnlearnDiffAtk-style) and report how often
the erased concept comes back.

For each prompt of the evaluation list that shows the erased concept, and each of
--images-per-prompt seeds, the attack puts --tokens tokens in front of the prompt and optimises
them so that the attacked model denoises the base model's image of that prompt as if asked for
it; after each timestep's iterations it draws with what it found and lets the judge (the one
`erase eval` uses) look. ASR before: the share of images in which the judge sees the concept
without an attack; after: with the attack. The base model is attacked too, as the reference.

    erase attack runs/three --output attacks/three
    erase attack runs/three runs/three-weighted --output attacks/compare --search soft
    erase attack runs/three --output probes/three --search inversion --tokens 1    # recovery probe

Writes attack.json (every attack, with the prompt found), report.md and images/ (each model's
image before and after the attack); `erase eval ... --attack FOLDER` puts the table into the
evaluation report. The defaults are the paper's; an attack that never succeeds
runs all 50 × 40 iterations, so --timesteps is the knob for a quicker, weaker look.
"""

from __future__ import annotations

import argparse

from erase.config_args import add_dataclass_arguments, dataclass_from_args
from eval.attack.config import AttackConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="run folders from `erase train`, or other models with --base")
    add_dataclass_arguments(parser, AttackConfig, skip=("runs",))


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from eval.attack.runner import print_summary, run_attack

    config = dataclass_from_args(AttackConfig, args, runs=args.runs)
    result = run_attack(config)
    print_summary(result, Path(config.output))
    return 0
