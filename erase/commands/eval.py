"""Evaluate erased models: draw the base and each erased model on the same seeds, judge the
images with a classifier, and write metrics.json, report.html and report.md (tables, image grids,
curves).

    erase eval runs/three --output reports/three
    erase eval runs/three runs/three-weighted --output reports/compare     # one comparison table
    erase eval other.safetensors --base default --erased class=three --model-config default ...

The run folder records the base model and the erased prompts; the erased concept is the label
(class and/or style) that all its forget prompts share in the evaluation list. Generation is
resumable: rerunning the command reuses finished images.
"""

from __future__ import annotations

import argparse

from erase.config_args import add_dataclass_arguments, dataclass_from_args
from eval.config import EvalConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="run folders from `erase train`, or other models with --base")
    add_dataclass_arguments(parser, EvalConfig, skip=("runs",))


def run(args: argparse.Namespace) -> int:
    from eval.runner import evaluate

    config = dataclass_from_args(EvalConfig, args, runs=args.runs)
    result = evaluate(config)
    if not result.metrics:  # a helper process under accelerate launch; the main one reports
        return 0
    for name, run_scores in result.metrics["runs"].items():
        scores = run_scores["erased_model"]
        shown = ", ".join(
            f"{k} {v['value']:.1%}" if v.get("percent") else f"{k} {v['value']:.3g}"
            for k, v in scores.items()
            if v["value"] is not None
        )
        print(f"{name}: {shown}")
    rate = f" ({result.images_per_second:.1f} images/s)" if result.images_per_second else ""
    print(f"report → {result.output / 'report.html'} (and report.md), numbers → {result.output / 'metrics.json'}{rate}")
    return 0
