"""The evaluation report: ``metrics.json`` (every number with its definition and sample count)
and ``report.md`` with the metric tables, base-vs-erased image grids on the same seeds, the
training curves, and for several runs a comparison table and a UA-vs-utility scatter."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from eval.metrics.base import rows_showing  # noqa: E402
from pipelines.files import atomic_path, write_json_atomic, write_text_atomic  # noqa: E402
from pipelines.grid import save_grid  # noqa: E402

SECTIONS = ("Settings", "Definitions", "Results", "Comparison", "Images", "Training curves")
UTILITY_KEYS = ("RA", "IRA")  # the retained-accuracy metric a scatter puts against UA
COLUMN_ORDER = ("UA", "UA_class", "UA_style", "RA", "IRA", "CRA", "CRA_erased_style", "FID_vs_base", "FID_vs_real")


def _fmt(entry: dict | None) -> str:
    if not entry or entry.get("value") is None:
        return "–"
    return f"{entry['value']:.1%}" if entry.get("percent") else f"{entry['value']:.3g}"


def _ua_key(scores: dict) -> str | None:
    return next((k for k in scores if k.startswith("UA")), None)


def write_report(result: dict, models, runs, output: Path) -> Path:
    figures = output / "figures"
    write_json_atomic(output / "metrics.json", result)
    lines = ["# Erasure evaluation", ""]

    lines += ["## Settings", ""]
    for key, val in result["settings"].items():
        lines.append(f"- {key}: {val}")
    gen = result["generation"]
    rate = f", {gen['images_per_second']:.1f} images/s" if gen["images_per_second"] else ""
    lines += [f"- images generated this time: {gen['images_generated']} ({gen['seconds']} s{rate})", ""]

    lines += ["## Definitions", ""]
    definitions = {}
    for run in result["runs"].values():
        for key, entry in (run["base"] | run["erased_model"]).items():
            definitions.setdefault(key, entry["definition"])
    lines += [f"- **{key}**: {text}" for key, text in definitions.items()] + [""]

    lines += ["## Results", ""]
    for name, run in result["runs"].items():
        erased = ", ".join(f"{a} = {v}" for a, v in run["erased"].items())
        lines += [f"### {name} (erased {erased})", ""]
        lines += [f"{run['forget_images']} forget-prompt images, {run['retain_images']} retain-prompt images.", ""]
        lines += ["| metric | base model | erased model | n |", "|---|---|---|---|"]
        for key in dict.fromkeys([*run["erased_model"], *run["base"]]):
            e, b = run["erased_model"].get(key), run["base"].get(key)
            lines.append(f"| {key} | {_fmt(b)} | {_fmt(e)} | {(e or b)['n']} |")
        lines.append("")

    lines += ["## Comparison", ""]
    found = {k for run in result["runs"].values() for k in run["erased_model"]}
    keys = [k for k in COLUMN_ORDER if k in found] + sorted(found - set(COLUMN_ORDER))
    lines += ["| run | erased | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for name, run in result["runs"].items():
        erased = ", ".join(f"{a}={v}" for a, v in run["erased"].items())
        lines.append(f"| {name} | {erased} | " + " | ".join(_fmt(run["erased_model"].get(k)) for k in keys) + " |")
    lines.append("")
    if (scatter := _scatter(result, figures / "ua_vs_utility.png")) is not None:
        lines += [f"![UA against retained accuracy]({scatter.relative_to(output).as_posix()})", ""]

    lines += ["## Images", ""]
    lines += ["Each grid: the base model (top row) and the erased model (bottom row), same prompts and seeds.", ""]
    base = models[0]
    for model, run in zip(models[1:], result["runs"].values(), strict=True):
        for part, rows in (("forget", _forget_rows(model, run)), ("retain", _retain_rows(model, run))):
            if not rows:
                continue
            target = figures / f"{model.name}-{part}.png"
            save_grid(base.paths(rows) + model.paths(rows), target, columns=len(rows), min_cell=64)
            lines += [
                f"**{model.name}, {part} prompts**",
                "",
                f"![{part}]({target.relative_to(output).as_posix()})",
                "",
            ]

    lines += ["## Training curves", ""]
    drawn = False
    for info in runs:
        if info.log is not None:
            target = _curves(info.log, figures / f"{info.name}-training.png", info.name)
            lines += [f"![{info.name} training]({target.relative_to(output).as_posix()})", ""]
            drawn = True
    if not drawn:
        lines += ["No training log in the evaluated folders.", ""]

    report = output / "report.md"
    write_text_atomic(report, "\n".join(lines))
    return report


def _first_image_rows(model, rows: list[int], limit: int = 10) -> list[int]:
    """One image (the first seed) per distinct prompt, at most ``limit``."""
    seen, out = set(), []
    for i in rows:
        prompt = model.entries[i]["prompt"]
        if prompt not in seen:
            seen.add(prompt)
            out.append(i)
    return out[:limit]


def _forget_rows(model, run) -> list[int]:
    return _first_image_rows(model, rows_showing(model.entries, run["erased"]))


def _retain_rows(model, run) -> list[int]:
    """Ten retain prompts spread over the list (one image each)."""
    forget = set(rows_showing(model.entries, run["erased"]))
    rows = [i for i in range(len(model.entries)) if i not in forget]
    firsts = _first_image_rows(model, rows, limit=len(rows))
    return firsts[:: max(1, len(firsts) // 10)][:10]


def _save_figure(fig, target: Path) -> Path:
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return target


def _curves(log: Path, target: Path, title: str) -> Path:
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    for ax, key, label in zip(axes, ("loss_forget", "loss_retain", "lambda"), ("ℓ_u", "ℓ_r", "λ"), strict=True):
        values = [r.get(key) for r in rows]
        if any(v is not None for v in values):
            ax.plot(steps, [float("nan") if v is None else v for v in values], lw=1)
        ax.set_title(label)
        ax.set_xlabel("step")
    fig.suptitle(title, y=1.04)
    return _save_figure(fig, target)


def _scatter(result: dict, target: Path) -> Path | None:
    points = []
    for name, run in result["runs"].items():
        scores = run["erased_model"]
        ua = _ua_key(scores)
        utility = next((k for k in UTILITY_KEYS if k in scores), None)
        if ua and utility and scores[ua]["value"] is not None and scores[utility]["value"] is not None:
            points.append((name, scores[ua]["value"], scores[utility]["value"], utility))
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, ua, utility, _ in points:
        ax.scatter(ua, utility, label=name)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_xlabel("UA (higher = better erased)")
    ax.set_ylabel(" / ".join(sorted({p[3] for p in points})) + " (higher = more kept)")
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    return _save_figure(fig, target)
