"""Erase one concept over a grid of a method's knob and several seeds, evaluate every run, and
write the erasure-vs-utility front (a table, a plot, the runs on the front).

Examples (the embedded default model):

    erase sweep --forget default/classes/three-forget --output sweeps/three
    erase sweep --forget default/styles/red-forget --output sweeps/red --seeds 0 1 2 \\
        --grid eupmu-fast:lambda_lr=1e4,1e5 --grid weighted:retain_weight=3,30 --grid none
    erase sweep ... --output sweeps/three --resume      # add points or finish a cut sweep

--grid METHOD:SETTING=V1,V2,... turns one train setting (any numeric `erase train` flag, with
underscores: retain_budget, lambda_lr, retain_weight, lambda_gain, mask_delta, learning_rate, ...;
or a choice: x_source=bank,trajectory, retain_probe=same,fresh, loss, mask, parameters, ...);
a bare METHOD is one point. Every other `erase train` flag (or --config file) is fixed for the
whole sweep. Each point and seed is an ordinary run folder under OUTPUT/runs/; all of them are
scored in one `erase eval` report under OUTPUT/eval/; the front is OUTPUT/front.md, front.json
and front.png (UA against RA for a class, IRA for a style; per method the hypervolume).
OUTPUT/sweep.json records the evaluation settings: a --resume must give the same.
"""

from __future__ import annotations

import argparse

from erase.commands.train import marker_time
from erase.commands.train import resume_argv as resume_argv  # the same rule: --resume once the folder is written
from erase.config import TrainConfig
from erase.config_args import add_dataclass_arguments, dataclass_from_args, read_config_file
from erase.sweep import PER_POINT, SweepConfig
from prompts import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sweep = parser.add_argument_group("the sweep")
    sweep.add_argument("--output", required=True, help=SweepConfig.__dataclass_fields__["output"].metadata["help"])
    sweep.add_argument("--grid", action="append", default=[], metavar="METHOD[:SETTING=V1,V2,...]",
                       help=SweepConfig.__dataclass_fields__["grid"].metadata["help"])  # fmt: skip
    sweep.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of every grid point (default: 0)")
    add_dataclass_arguments(sweep, SweepConfig, skip=("output", "grid", "seeds"))
    fixed = parser.add_argument_group("fixed train settings (as `erase train`)")
    fixed.add_argument("--config", help="a .toml/.yaml/.json file of train settings (keys = flag names)")
    add_dataclass_arguments(fixed, TrainConfig, skip=PER_POINT, layered=True)


def run(args: argparse.Namespace) -> int:
    from erase.sweep import run_sweep

    sweep = dataclass_from_args(SweepConfig, args)
    train = read_config_file(args.config, TrainConfig) if args.config else {}
    for name in PER_POINT:
        if name in train:
            raise InputError(f"--config {args.config}: {name!r} is set by the sweep per run; remove it")
    train |= {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__ and k not in PER_POINT}
    args.marker_before = marker_time(sweep.output)  # for resume_argv
    front = run_sweep(sweep, train)
    if front:
        on_front = [p["point"] for p in front["points"] if p["on_front"]]
        print(f"sweep: {len(front['runs'])} runs; on the front: {', '.join(on_front) or 'none'}")
        print(f"front → {sweep.output}/front.md (table), front.png (plot), eval/report.md (the full report)")
    return 0
