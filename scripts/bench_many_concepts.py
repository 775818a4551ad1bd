"""Several concepts on the default model: erased at once (one forget list spanning 1, 2, 3 and 5
digits, and a digit with a style), and one after another (`erase train --model RUN`: three, then
seven, then one), scored with the shipped classifier as in measure_erasure.py.

    python scripts/bench_many_concepts.py                     # eupmu at its defaults, seed 0
    python scripts/bench_many_concepts.py --method weighted --seed 1

Per run: recognition of each erased concept (lower = better erased; UA is 1 minus it), the mean
and worst recognition of the digits (and styles) not erased, and style accuracy. For the
sequence, every concept erased so far is measured again after each step, so a concept that
comes back shows as its recognition rising ("rebound"). Runs and images are kept under
<output>, so a rerun only does what is missing; rows go to <output>/many.json and many.md
(many-at-once.* or many-sequence.* with --only).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from measure_erasure import score  # noqa: E402

from erase.config import TrainConfig  # noqa: E402
from erase.loop import train  # noqa: E402
from pipelines.files import write_json_atomic, write_text_atomic  # noqa: E402
from prompts import load_prompts  # noqa: E402

AT_ONCE = [
    ["class:three"],
    ["class:three", "class:seven"],
    ["class:three", "class:seven", "class:one"],
    ["class:three", "class:seven", "class:one", "class:five", "class:nine"],
    ["class:three", "style:red"],
]
SEQUENCE = ["class:three", "class:seven", "class:one"]


def forget_prompts(concepts: list[str]) -> list[str]:
    prompts = []
    for concept in concepts:
        kind, _, name = concept.partition(":")
        folder = "classes" if kind == "class" else "styles"
        prompts += [r.prompt for r in load_prompts(f"default/{folder}/{name}-forget")]
    return list(dict.fromkeys(prompts))


def erase(model: str, concepts: list[str], run: Path, args) -> float | None:
    """Train one run (skipped when a finished one is there); its wall time, or None if reused."""
    if (run / "unet").is_dir() and (run / "train_config.json").is_file():
        return None
    forget = run.parent / "lists" / f"{run.name}.txt"
    forget.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(forget, "\n".join(forget_prompts(concepts)) + "\n")
    config = TrainConfig(
        output=str(run),
        model=model,
        forget=str(forget),
        method=args.method,
        seed=args.seed,
        overwrite=True,
        progress=False,
    )
    start = time.perf_counter()
    train(config)
    return round(time.perf_counter() - start, 1)


def measure(run: Path, erased: list[str], args, out: Path) -> dict:
    report, _ = score(str(run), out / "images" / run.name, args.images_per_prompt)
    recognised = {}
    for concept in erased:
        kind, _, name = concept.partition(":")
        by = report["by_digit"] if kind == "class" else report["by_style"]
        recognised[concept] = by[name]["digit" if kind == "class" else "style"]
    gone_digits = {c.partition(":")[2] for c in erased if c.startswith("class:")}
    gone_styles = {c.partition(":")[2] for c in erased if c.startswith("style:")}
    digits = [row["digit"] for name, row in report["by_digit"].items() if name not in gone_digits]
    styles = [row["style"] for name, row in report["by_style"].items() if name not in gone_styles]
    return {
        "recognised": recognised,
        "digits_kept_mean": round(sum(digits) / len(digits), 4),
        "digits_kept_worst": min(digits),
        "styles_kept_mean": round(sum(styles) / len(styles), 4),
        "styles_kept_worst": min(styles),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="eupmu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images-per-prompt", type=int, default=10)
    p.add_argument("--output", default=str(ROOT / ".cache" / "many-concepts"))
    p.add_argument("--only", choices=["at-once", "sequence"], help="one half of the benchmark")
    args = p.parse_args(argv)
    out = Path(args.output)
    rows = []
    for concepts in AT_ONCE if args.only != "sequence" else []:
        run = out / "runs" / f"once-{'-'.join(c.partition(':')[2] for c in concepts)}-{args.method}-s{args.seed}"
        seconds = erase("default", concepts, run, args)
        row = {"mode": "at once", "erased": concepts, "train_seconds": seconds}
        rows.append(row | measure(run, concepts, args, out))
        print(_line(rows[-1]), flush=True)
    model = "default"
    for step, concept in enumerate(SEQUENCE if args.only != "at-once" else [], start=1):
        run = out / "runs" / f"seq{step}-{concept.partition(':')[2]}-{args.method}-s{args.seed}"
        seconds = erase(model, [concept], run, args)
        so_far = SEQUENCE[:step]
        row = {"mode": f"step {step}", "erased": so_far, "train_seconds": seconds}
        rows.append(row | measure(run, so_far, args, out))
        print(_line(rows[-1]), flush=True)
        model = str(run)
    name = f"many-{args.only}" if args.only else "many"
    write_json_atomic(out / f"{name}.json", rows)
    write_text_atomic(out / f"{name}.md", _table(rows))
    print(_table(rows))
    return rows


def _line(row: dict) -> str:
    gone = ", ".join(f"{c.partition(':')[2]} {v:.0%}" for c, v in row["recognised"].items())
    return (
        f"{row['mode']:8s} recognised: {gone}  digits kept {row['digits_kept_mean']:.1%} (worst "
        f"{row['digits_kept_worst']:.0%})  styles kept {row['styles_kept_mean']:.1%} "
        f"(worst {row['styles_kept_worst']:.0%})"
    )


def _table(rows: list[dict]) -> str:
    lines = [
        "| mode | erased | each erased concept still recognised | UA (mean) | other digits kept: mean / worst | "
        "other styles kept: mean / worst |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        names = [c.partition(":")[2] for c in r["erased"]]
        each = " · ".join(f"{c.partition(':')[2]} {v:.1%}" for c, v in r["recognised"].items())
        ua = 1 - sum(r["recognised"].values()) / len(r["recognised"])
        lines.append(
            f"| {r['mode']} | {', '.join(names)} | {each} | {ua:.1%} | "
            f"{r['digits_kept_mean']:.1%} / {r['digits_kept_worst']:.1%} | "
            f"{r['styles_kept_mean']:.1%} / {r['styles_kept_worst']:.1%} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
