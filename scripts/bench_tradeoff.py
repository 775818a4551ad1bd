"""The erasure/utility trade-off on the default model: erase a digit and a style with every
method over a sweep of its knob, score each model with the shipped classifier, and plot UA
against retained accuracy per method.

    python scripts/bench_tradeoff.py                                  # both targets, seed 0
    python scripts/bench_tradeoff.py --targets class:three --seeds 0 1 2 --only eupmu weighted

Per run: UA (share of the erased concept's images not recognised as it), RA (class) or IRA
(style), CRA under the erased style (style), FID against the base model's images on the retain
prompts in the classifier's feature space, and wall time of training. 10 images per digit ×
style prompt, the same seeds for every model. Runs are kept under <output>/runs, so a rerun
only scores what is missing. Writes <output>/tradeoff.json, tradeoff.md and tradeoff-<target>.png.

Rows already in <output>/tradeoff.json are not run again: to extend the README's 14-concept
comparison instead of redoing it, start from its committed rows,
`cp docs/results/tradeoff14.json .cache/tradeoff14/tradeoff.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from measure_erasure import BAR_ERASED, BAR_KEPT, bar_misses, forget_list, score, summarise  # noqa: E402

from erase.config import TrainConfig  # noqa: E402
from erase.config_args import value_from_text  # noqa: E402
from erase.loop import train  # noqa: E402
from eval.images import load_images  # noqa: E402
from eval.judges import DigitStyleJudge  # noqa: E402
from eval.metrics.fid import frechet_distance  # noqa: E402
from pipelines.default.render import DIGIT_WORDS, STYLES  # noqa: E402
from pipelines.files import write_json_atomic, write_text_atomic  # noqa: E402

# method → list of (label, TrainConfig overrides): each method's curve.
SWEEPS = {
    "none": [("none", {})],
    "weighted": [(f"w={w:g}", {"retain_weight": w}) for w in (0.3, 1, 3, 10, 30)],
    # ε = 0 is the default (β = 3e6). The gain points calibrate β from the run's own Δℓ_r noise
    # instead (--lambda-gain, calibration.py).
    "eupmu": [(f"ε={e:g}", {"retain_budget": e}) for e in (0, 1e-6, 3e-6, 1e-5)]
    + [(f"gain={g:g}", {"lambda_gain": g}) for g in (0.1, 0.3, 1, 3)]
    # Δℓ_r measured on a retain batch the step did not train on (--retain-probe fresh)
    + [("fresh", {"retain_probe": "fresh"})]
    + [(f"fresh,gain={g:g}", {"retain_probe": "fresh", "lambda_gain": g}) for g in (0.1, 0.3, 1)]
    # the fresh probe's Δℓ_r is unbiased, so λ integrates to β × the retain loss's level: a β in
    # the range eupmu-fast needs (λ ≈ 10 at a level of ~3e-4)
    + [(f"fresh,β={b}", {"retain_probe": "fresh", "lambda_lr": float(b)}) for b in ("1e4", "3e4", "1e5", "3e5", "1e6")],
    # eupmu-fast's Δℓ_r carries batch-to-batch noise (~1e-4 here, 100× the step-to-step change),
    # so its natural knob is a smaller λ rate β.
    "eupmu-fast": [(f"β={b}", {"lambda_lr": float(b)}) for b in ("3e4", "3e5", "3e6")],
    # explicit's first-order guarantee holds for small steps: sweep Adam's learning rate.
    "explicit": [(f"lr={lr}", {"learning_rate": float(lr)}) for lr in ("1e-4", "3e-4", "1e-3")],
    # a larger δ keeps more coordinates (a weaker sign test).
    "eupmu+mask": [(f"δ={d:g}", {"mask": "feasible", "mask_delta": d}) for d in (0.05, 0.2, 0.45)],
}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--targets",
        nargs="+",
        default=["class:three", "style:red"],
        help="class:<digit> or style:<style>; `all` = the default model's 14 concepts (10 digits, 4 styles)",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument(
        "--only",
        nargs="+",
        default=list(SWEEPS),
        metavar="METHOD[:SETTING]",
        help=f"methods ({', '.join(SWEEPS)}), or single points such as weighted:w=10",
    )
    p.add_argument("--images-per-prompt", type=int, default=10)
    p.add_argument("--output", default=str(ROOT / ".cache" / "tradeoff"))
    p.add_argument(
        "--rescore",
        action="store_true",
        help="only re-classify the finished runs' kept images (after a change to the scores); rewrite the table",
    )
    args = p.parse_args(argv)

    out = Path(args.output)
    judge = DigitStyleJudge()
    out.mkdir(parents=True, exist_ok=True)
    with _shared(out):  # a second process started alongside waits for the base images
        _, base_entries = score("default", out / "images" / "base", args.images_per_prompt)
    results_file = out / "tradeoff.json"
    rows = json.loads(results_file.read_text()) if results_file.is_file() else []
    points = _points(args.only, p)
    if "all" in args.targets:
        args.targets = [t for t in args.targets if t != "all"] + ALL_TARGETS
    if args.rescore:
        rows = [_rescored(row, out, args.images_per_prompt) for row in rows]
        write_json_atomic(results_file, rows)
        _write_table_and_plots(rows, out)
        return rows
    done = {(r["target"], r["method"], r["setting"], r["seed"]) for r in rows}
    for target in args.targets:
        kind, forget = forget_list(target)
        name = target.partition(":")[2]
        axis = "class" if kind == "class" else "style"
        retain = [i for i, e in enumerate(base_entries) if e.get(axis) != name]
        base_images = load_images([out / "images" / "base" / base_entries[i]["file"] for i in retain], size=32)
        for method, setting, overrides in points:
            for seed in args.seeds:
                if (target, method, setting, seed) in done:
                    continue
                tag = _tag(target, method, setting, seed)
                run = out / "runs" / tag
                config = TrainConfig(
                    output=str(run),
                    forget=forget,
                    method=method.replace("+mask", ""),
                    seed=seed,
                    overwrite=True,
                    progress=False,
                    **overrides,
                )
                start = time.perf_counter()
                train(config)
                seconds = time.perf_counter() - start
                report, entries = score(str(run), out / "images" / tag, args.images_per_prompt)
                mine = load_images([out / "images" / tag / entries[i]["file"] for i in retain], size=32)
                with torch.no_grad():
                    fid = frechet_distance(judge, base_images, mine)
                row = {"target": target, "method": method, "setting": setting, "seed": seed}
                row |= {"train_seconds": round(seconds, 1), "fid_vs_base": round(fid, 2)}
                row |= summarise(kind, name, report)
                row |= lambda_behaviour(run / "train_log.jsonl", config)
                rows = _append_row(results_file, row)
                print(_line(row), flush=True)
    _write_table_and_plots(rows, out)
    return rows


ALL_TARGETS = [f"class:{w}" for w in DIGIT_WORDS] + [f"style:{s}" for s in STYLES]


def _append_row(results_file: Path, row: dict) -> list[dict]:
    """Add ``row`` to the results on disk as they are now: several runs of this script may share
    one --output (different targets or settings), and each keeps the others' rows."""
    with _shared(results_file.parent):  # no row lost to a write from another process in between
        rows = json.loads(results_file.read_text()) if results_file.is_file() else []
        rows.append(row)
        write_json_atomic(results_file, rows)
    return rows


@contextlib.contextmanager
def _shared(out: Path):
    """Hold <out>/.bench.lock while the block runs, waiting for another process that holds it
    (the erase commands' own locks refuse instead of waiting)."""
    with open(out / ".bench.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _tag(target: str, method: str, setting: str, seed: int) -> str:
    """The run's folder name under <output>/runs and <output>/images."""
    kind, _, name = target.partition(":")
    return f"{kind}-{name}-{method}-{setting}-s{seed}".replace("=", "").replace("+", "-")


def _rescored(row: dict, out: Path, images_per_prompt: int) -> dict:
    """``row`` with its classifier scores recomputed from its kept images (nothing is redrawn);
    as it is when its run is not here (rows copied from docs/results/ have no runs)."""
    tag = _tag(row["target"], row["method"], row["setting"], row["seed"])
    if not (out / "runs" / tag).is_dir():
        print(f"rescore: {tag} has no run under {out / 'runs'}; its row is kept as it is", flush=True)
        return row
    kind, _, name = row["target"].partition(":")
    report, _ = score(str(out / "runs" / tag), out / "images" / tag, images_per_prompt)
    return row | summarise(kind, name, report)


def lambda_behaviour(log_file: Path, config: TrainConfig) -> dict:
    """How λ moved after the calibration warm-up: the share of steps at 0 or at its cap, its
    mean, and its median step-to-step change against that mean (a tracking λ moves little)."""
    log = [json.loads(line) for line in log_file.read_text().splitlines()]
    lambdas = [e["lambda"] for e in log if "lambda" in e and not e.get("warmup")]
    if config.method not in ("eupmu", "eupmu-fast") or len(lambdas) < 3:
        return {}
    mean = statistics.mean(lambdas)
    moves = [abs(b - a) for a, b in zip(lambdas, lambdas[1:], strict=False)]
    return {
        "lambda_at_bounds": round(sum(lam <= 0 or lam >= config.lambda_max for lam in lambdas) / len(lambdas), 3),
        "lambda_mean": round(mean, 4),
        "lambda_move_ratio": round(statistics.median(moves) / mean, 3) if mean > 0 else None,
    }


def _across_concepts(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """(method, setting) → its seed-0 rows, for the settings run on more than one concept; the
    settings run on most concepts first, each one's rows in concept order."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r["seed"] == 0 and "cross_kept" in r:
            groups.setdefault((r["method"], r["setting"]), []).append(r)
    order = {t: i for i, t in enumerate(ALL_TARGETS)}
    return {
        setting: sorted(rs, key=lambda r: order.get(r["target"], len(order)))
        for setting, rs in sorted(groups.items(), key=lambda g: -len(g[1]))
        if len(rs) > 1
    }


def _bar_table(rows: list[dict]) -> list[str]:
    """Per method and setting, over every concept it was run on (seed 0): how many meet the
    quality bar, and which do not, with the measure that fails. The "untuned" score: one setting
    for every concept."""
    lines = [
        f"Quality bar (seed 0): the erased concept recognised in ≤ {BAR_ERASED:.0%} of its images, every other "
        f"concept and the other axis on the retained images in ≥ {BAR_KEPT:.0%}.",
        "",
        "| method | setting | concepts | meet the bar | mean UA | mean worst other | mean other axis | fails |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (method, setting), rs in _across_concepts(rows).items():
        fails = [f"{r['target'].partition(':')[2]} ({', '.join(bar_misses(r))})" for r in rs if bar_misses(r)]
        n = len(rs)
        lines.append(
            f"| {method} | {setting} | {n} | {n - len(fails)} | {_mean([1 - r['erased'] for r in rs])} | "
            f"{_mean([r['others_worst'] for r in rs])} | {_mean([r['cross_kept'] for r in rs])} | "
            f"{'; '.join(fails) or '–'} |"
        )
    return lines


def _concepts_plot(rows: list[dict], out: Path) -> None:
    """concepts.png: for every setting run on several concepts (seed 0), each concept's UA against
    its worst kept other concept, the quality bar's corner shaded."""
    import matplotlib.pyplot as plt

    groups = _across_concepts(rows)
    if not groups:
        return
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.fill_between([100 * (1 - BAR_ERASED), 101], 100 * BAR_KEPT, 101, color="green", alpha=0.12, label="the bar")
    markers = "os^Dv<>P"
    for i, ((method, setting), rs) in enumerate(sorted(groups.items())):
        xs = [100 * (1 - r["erased"]) for r in rs]
        ys = [100 * r["others_worst"] for r in rs]
        passed = sum(r["meets_bar"] for r in rs)
        label = f"{method} {setting} ({passed}/{len(rs)} meet it)"
        ax.scatter(xs, ys, marker=markers[i % len(markers)], alpha=0.7, label=label)
    ax.set_xlabel("UA, % (higher = better erased)")
    ax.set_ylabel("worst other concept kept, %")
    ax.set_title("every concept of the default model, one setting per method")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.savefig(out / "concepts.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def _concept_table(rows: list[dict]) -> list[str]:
    """One line per concept, one column per setting run on several concepts (seed 0): UA / worst
    other / other axis, and ✗ where the run misses the quality bar."""
    groups = _across_concepts(rows)
    settings = list(groups)
    lines = [
        "UA / worst other / other axis per concept (seed 0; ✗ misses the bar):",
        "",
        "| concept | " + " | ".join(f"{m} {s}" for m, s in settings) + " |",
        "|---|" + "---|" * len(settings),
    ]
    by_target = {(r["target"], *setting): r for setting, rs in groups.items() for r in rs}
    for target in [t for t in ALL_TARGETS if any((t, *setting) in by_target for setting in settings)]:
        cells = []
        for setting in settings:
            r = by_target.get((target, *setting))
            cells.append(
                "–"
                if r is None
                else f"{100 * (1 - r['erased']):.0f} / {100 * r['others_worst']:.0f} / {100 * r['cross_kept']:.0f}"
                + ("" if r["meets_bar"] else " ✗")
            )
        lines.append(f"| {target.partition(':')[2]} | " + " | ".join(cells) + " |")
    return lines


def _points(only: list[str], parser: argparse.ArgumentParser) -> list[tuple[str, str, dict]]:
    """(method, setting, overrides) for each --only entry, in SWEEPS order."""
    chosen = []
    for entry in only:
        method, _, setting = entry.partition(":")
        if method not in SWEEPS:
            parser.error(f"unknown method {method!r}; choose from {', '.join(SWEEPS)}")
        settings = [s for s, _ in SWEEPS[method]]
        if setting and setting not in settings:
            overrides = _free_setting(setting)
            if overrides is None:
                parser.error(
                    f"{method} has no setting {setting!r}; choose from {', '.join(settings)}, "
                    "or give TrainConfig fields such as retain_probe=fresh,lambda_lr=3e5"
                )
            chosen.append((method, setting, overrides))
            continue
        chosen += [(method, s, o) for s, o in SWEEPS[method] if not setting or s == setting]
    return chosen


def _free_setting(setting: str) -> dict | None:
    """``field=value,field=value`` over TrainConfig's fields, each value converted to its field's
    type (for settings the sweeps above do not name); None if a key is not a field."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides = {}
    for pair in setting.split(","):
        key, _, value = pair.partition("=")
        if key not in names or not value:
            return None
        try:
            overrides[key] = value_from_text(TrainConfig, key, value)
        except ValueError:
            return None
    return overrides


def _mean(values: list[float]) -> str:
    return f"{100 * sum(values) / len(values):.1f}%"


def _spread(values: list[float], percent: bool = True) -> str:
    """Mean, and ± the sample standard deviation when there are several seeds."""
    if not values:
        return "–"
    scale, unit = (100, "%") if percent else (1, "")
    mean = sum(values) / len(values)
    text = f"{mean * scale:.1f}"
    if len(values) > 1:
        std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
        text += f" ± {std * scale:.1f}"
    return text + unit


def _line(row: dict) -> str:
    kept = row["others_mean"]
    lam = (
        f"  λ: bounds {row['lambda_at_bounds']:.0%} mean {row['lambda_mean']:.3g} move/mean {row['lambda_move_ratio']}"
        if "lambda_mean" in row
        else ""
    )
    return (
        f"{row['target']:12s} {row['method']:11s} {row['setting']:8s} s{row['seed']}  "
        f"UA {1 - row['erased']:6.1%}  kept {kept:6.1%}  FID {row['fid_vs_base']:7.2f}  {row['train_seconds']:5.1f}s"
        + lam
    )


def _write_table_and_plots(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [
        "| target | method | setting | seeds | UA | RA / IRA (mean) | worst other | CRA under erased style | "
        "FID vs base | train s (median) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {(m, setting): (i, j) for i, m in enumerate(SWEEPS) for j, (setting, _) in enumerate(SWEEPS[m])}
    groups: dict[tuple, list[dict]] = {}
    for r in sorted(rows, key=lambda r: (r["target"], order.get((r["method"], r["setting"]), (99, 99)))):
        groups.setdefault((r["target"], r["method"], r["setting"]), []).append(r)
    for (target, method, setting), rs in groups.items():
        cra = _spread([r["digit_under_erased_style"] for r in rs if "digit_under_erased_style" in r])
        lines.append(
            f"| {target} | {method} | {setting} | {len(rs)} | {_spread([1 - r['erased'] for r in rs])} | "
            f"{_spread([r['others_mean'] for r in rs])} | {_spread([r['others_worst'] for r in rs])} | {cra} | "
            f"{_spread([r['fid_vs_base'] for r in rs], percent=False)} | "
            f"{statistics.median(r['train_seconds'] for r in rs):.0f} |"  # robust to a run on busy cores
        )
    lines += ["", *_bar_table(rows), "", *_concept_table(rows)]
    write_text_atomic(out / "tradeoff.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    _concepts_plot(rows, out)
    for target in sorted({r["target"] for r in rows}):
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for method in SWEEPS:
            points = [
                (1 - sum(r["erased"] for r in rs) / len(rs), sum(r["others_mean"] for r in rs) / len(rs))
                for (t, m, _), rs in groups.items()
                if t == target and m == method
            ]
            if points:
                points.sort()
                ax.plot(*zip(*points, strict=True), marker="o", label=method)
        ax.set_xlabel("UA (higher = better erased)")
        ax.set_ylabel("RA / IRA (higher = more kept)")
        ax.set_title(target)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.savefig(out / f"tradeoff-{target.replace(':', '-')}.png", dpi=110, bbox_inches="tight")
        plt.close(fig)


if __name__ == "__main__":
    main()
