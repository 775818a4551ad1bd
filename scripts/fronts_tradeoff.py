"""Each method's erasure-vs-utility front on every concept, from the runs `bench_tradeoff.py`
has already scored, and the area each front dominates (issue 13's hypervolumes).

    python scripts/fronts_tradeoff.py \\
        --method weighted "weighted:retain_weight=3" "weighted:retain_weight=10" "weighted:retain_weight=30" \\
        --method eupmu-fast "eupmu-fast:lambda_lr=1e4" "eupmu-fast:lambda_lr=3e4" "eupmu-fast:lambda_lr=1e5"

Each --method NAME is followed by the METHOD:SETTING labels of its points, as bench_tradeoff.py
wrote them into <output>/tradeoff.json (run those first). Per concept and method: the hypervolume
of (UA, kept), kept being the other concepts' mean recognition (RA for a digit, IRA for a style),
and of (UA, 1 − FID/FID_max), FID_max the largest FID of that concept over every method's points,
as `erase sweep` computes them (erase/sweep.py). A larger area is a better front; 1 is the
corner (erased, all kept). Writes <output>/fronts.md and fronts.png (one panel per concept: UA
against FID, each method's points joined in order of FID).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_tradeoff import ALL_TARGETS  # noqa: E402

from erase.sweep import hypervolume  # noqa: E402
from pipelines.files import write_text_atomic  # noqa: E402


def method_points(rows: list[dict], labels: list[str], target: str, seed: int) -> list[dict]:
    """The rows of ``target`` at ``seed`` whose METHOD:SETTING is one of ``labels``."""
    wanted = {tuple(label.split(":", 1)) for label in labels}
    return [r for r in rows if r["target"] == target and r["seed"] == seed and (r["method"], r["setting"]) in wanted]


def fronts(rows: list[dict], methods: dict[str, list[str]], seed: int) -> dict[str, dict[str, dict]]:
    """target → method → its points as (UA, kept, FID) and its two hypervolumes."""
    result = {}
    for target in ALL_TARGETS:
        mine = {name: method_points(rows, labels, target, seed) for name, labels in methods.items()}
        if not all(mine.values()):
            continue
        fid_max = max(r["fid_vs_base"] for rs in mine.values() for r in rs)
        result[target] = {}
        for name, rs in mine.items():
            points = [(1 - r["erased"], r["others_mean"], r["fid_vs_base"]) for r in rs]
            result[target][name] = {
                "points": points,
                "UA_kept": hypervolume([(ua, kept) for ua, kept, _ in points]),
                "UA_FID": hypervolume([(ua, 1 - fid / fid_max) for ua, _, fid in points]),
            }
    return result


def table(result: dict, methods: list[str]) -> list[str]:
    lines = [
        "| concept | " + " | ".join(f"{m}: UA × kept | {m}: UA × (1 − FID/FID_max)" for m in methods) + " |",
        "|---|" + "---|---|" * len(methods),
    ]
    for target, by_method in result.items():
        cells = [f"{by_method[m]['UA_kept']:.3f} | {by_method[m]['UA_FID']:.3f}" for m in methods]
        lines.append(f"| {target.partition(':')[2]} | " + " | ".join(cells) + " |")
    means = [
        f"{statistics.mean(r[m]['UA_kept'] for r in result.values()):.3f} | "
        f"{statistics.mean(r[m]['UA_FID'] for r in result.values()):.3f}"
        for m in methods
    ]
    lines.append("| **mean** | " + " | ".join(means) + " |")
    return lines


def plot(result: dict, methods: list[str], out: Path) -> None:
    import matplotlib.pyplot as plt

    columns = 5
    rows = -(-len(result) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.0 * columns, 2.6 * rows), squeeze=False)
    for ax, (target, by_method) in zip(axes.flat, result.items(), strict=False):
        for name in methods:  # kept saturates near 100% on the default model; FID still separates
            points = sorted(by_method[name]["points"], key=lambda p: p[2])
            ax.plot([p[2] for p in points], [100 * p[0] for p in points], marker="o", label=name, alpha=0.8)
        ax.set_title(target.partition(":")[2], fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(result) :]:
        ax.axis("off")
    axes[0][0].legend(fontsize=7)
    fig.supxlabel("FID against the base model on the retain prompts (lower = closer)")
    fig.supylabel("UA, % (higher = better erased)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--method", nargs="+", action="append", required=True, metavar=("NAME", "METHOD:SETTING"),
        help="a method's name, then the bench_tradeoff labels of its points",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=str(ROOT / ".cache" / "tradeoff14"))
    args = p.parse_args(argv)
    methods = {}
    for name, *labels in args.method:
        if not labels or any(":" not in label for label in labels):
            p.error(f"--method {name}: give its points as METHOD:SETTING labels after the name")
        methods[name] = labels
    out = Path(args.output)
    results_file = out / "tradeoff.json"
    if not results_file.is_file():
        p.error(f"{results_file} not found: run scripts/bench_tradeoff.py with --output {out} first")
    result = fronts(json.loads(results_file.read_text()), methods, args.seed)
    if not result:
        p.error("no concept has points of every method at this seed: run them with bench_tradeoff.py first")
    lines = table(result, list(methods))
    write_text_atomic(out / "fronts.md", "\n".join(lines) + "\n")
    plot(result, list(methods), out / "fronts.png")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
