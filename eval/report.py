"""The evaluation report: ``metrics.json`` (every number with its definition and sample count)
and ``report.md`` / ``report.html`` with the metric tables, base-vs-erased image grids on the same seeds, the
training curves, and for several runs a comparison table and a UA-vs-utility scatter."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from eval.concepts import describe, rows_showing  # noqa: E402
from eval.report_blocks import Block, Bullets, Figure, Heading, Table, Text, to_html, to_markdown  # noqa: E402
from pipelines.files import atomic_path, write_json_atomic, write_text_atomic  # noqa: E402
from pipelines.grid import save_grid  # noqa: E402

SECTIONS = ("Settings", "Definitions", "Results", "Comparison", "Images", "Training curves")
UTILITY_KEYS = ("RA", "IRA")  # the retained-accuracy metric a scatter puts against UA
GRID_CELL = 96  # px per image in the grids: the default model's 32-px images are enlarged 3×
COLUMN_ORDER = ("UA", "UA_class", "UA_style", "RA", "IRA", "CRA", "CRA_erased_style", "FID_vs_base", "FID_vs_real")


def _fmt(entry: dict | None) -> str:
    if not entry or entry.get("value") is None:
        return "–"
    return f"{entry['value']:.1%}" if entry.get("percent") else f"{entry['value']:.3g}"


def headline_ua_key(scores: dict) -> str | None:
    """The UA a report or a front puts against utility: UA, or for one concept with two labels
    (red threes) the first of UA_class and UA_style, which is all such a run reports."""
    return "UA" if "UA" in scores else next((k for k in scores if k.startswith("UA")), None)


def headline_utility_key(scores: dict) -> str | None:
    """The retained accuracy put against UA: RA where classes are kept, else IRA."""
    return next((k for k in UTILITY_KEYS if k in scores), None)


def write_report(result: dict, models, runs, output: Path) -> Path:
    """metrics.json, the figures, then report.md and report.html from the same blocks; returns
    report.html, the one to open."""
    write_json_atomic(output / "metrics.json", result)
    blocks = report_blocks(result, models, runs, output)
    write_text_atomic(output / "report.md", to_markdown(blocks))
    page = output / "report.html"
    write_text_atomic(page, to_html(blocks, title=_title(result)))
    return page


def _title(result: dict) -> str:
    erased = " | ".join(f"{name}: {describe(run['erased'])}" for name, run in result["runs"].items())
    return f"Erasure evaluation ({erased})" if erased else "Erasure evaluation"


def report_blocks(result: dict, models, runs, output: Path) -> list[Block]:
    """What the report says, section by section (SECTIONS); figures are drawn as it goes."""
    figures = output / "figures"

    def rel(path: Path) -> str:
        return path.relative_to(output).as_posix()

    blocks: list[Block] = [Heading(_title(result), 1)]

    gen = result["generation"]
    rate = f", {gen['images_per_second']:.1f} images/s" if gen["images_per_second"] else ""
    settings = [("", f"{key}: {val}") for key, val in result["settings"].items()]
    settings.append(("", f"images generated this time: {gen['images_generated']} ({gen['seconds']} s{rate})"))
    blocks += [Heading("Settings"), Bullets(settings)]

    definitions = {}
    for run in result["runs"].values():
        for key, entry in (run["base"] | run["erased_model"]).items():
            definitions.setdefault(key, entry["definition"])
    blocks += [Heading("Definitions"), Bullets(list(definitions.items()))]

    blocks.append(Heading("Results"))
    for name, run in result["runs"].items():
        erased = describe(run["erased"])
        rows = []
        for key in dict.fromkeys([*run["erased_model"], *run["base"]]):
            e, b = run["erased_model"].get(key), run["base"].get(key)
            rows.append([key, _fmt(b), _fmt(e), str((e or b)["n"])])
        blocks += [
            Heading(f"{name} (erased {erased})", 3),
            Text(f"{run['forget_images']} forget-prompt images, {run['retain_images']} retain-prompt images."),
            Table(["metric", "base model", "erased model", "n"], rows),
        ]

    blocks.append(Heading("Comparison"))
    found = {k for run in result["runs"].values() for k in run["erased_model"]}
    keys = [k for k in COLUMN_ORDER if k in found] + sorted(found - set(COLUMN_ORDER))
    rows = [
        [name, describe(run["erased"])] + [_fmt(run["erased_model"].get(k)) for k in keys]
        for name, run in result["runs"].items()
    ]
    blocks.append(Table(["run", "erased", *keys], rows))
    if (scatter := _scatter(result, figures / "ua_vs_utility.png")) is not None:
        blocks.append(Figure(rel(scatter), "UA against retained accuracy"))

    if "attack" in result:
        blocks += _attack_blocks(result)

    blocks += [
        Heading("Images"),
        Text("Each grid: the base model (top row) and the erased model (bottom row), same prompts and seeds."),
    ]
    base = models[0]
    for model, run in zip(models[1:], result["runs"].values(), strict=True):
        for part, rows in (("forget", _forget_rows(model, run)), ("retain", _retain_rows(model, run))):
            if not rows:
                continue
            target = figures / f"{model.name}-{part}.png"
            save_grid(base.paths(rows) + model.paths(rows), target, columns=len(rows), min_cell=GRID_CELL)
            blocks.append(Figure(rel(target), part, caption=f"{model.name}, {part} prompts", pixelated=True))

    blocks.append(Heading("Training curves"))
    drawn = [info for info in runs if info.log is not None]
    for info in drawn:
        target = _curves(info.log, figures / f"{info.name}-training.png", info.name)
        blocks.append(Figure(rel(target), f"{info.name} training"))
    if not drawn:
        blocks.append(Text("No training log in the evaluated folders."))
    return blocks


def _attack_blocks(result: dict) -> list[Block]:
    """ASR before and after `erase attack`, per model it attacked, from the folder given."""
    from eval.attack.report import asr_table, method_text

    attack = result["attack"]
    missing = [name for name in result["runs"] if name not in attack["models"]]
    text = f"From `{attack['folder']}`. " + method_text(attack["settings"])
    if missing:
        text += f" Not attacked: {', '.join(missing)}."
    return [Heading("Adversarial prompts"), Text(text), asr_table(attack["models"])]


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
        ua = headline_ua_key(scores)
        utility = headline_utility_key(scores)
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
