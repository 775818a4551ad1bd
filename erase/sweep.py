"""`erase sweep`: one concept over a grid of a method's knob and several seeds, evaluated
together, summarised as the erasure-vs-utility front.

The knob is the setting a user turns instead of hand-tuning a weight: the retain budget ε for
`eupmu`, λ's rate β for `eupmu-fast`, the weight w for `weighted`, ... Every grid point and
seed is an ordinary run folder under ``OUTPUT/runs/`` (so it can be exported, evaluated again
or resumed on its own), all of them are scored in one ``erase eval`` report under
``OUTPUT/eval/`` (the base model's images are drawn once), and the front is written as
``front.json``, ``front.md`` and ``front.png``. A sweep run again with ``--resume`` reuses the
finished runs and images, continues interrupted ones and adds new grid points.

Per point the two axes are UA (higher = better erased) and kept accuracy: RA when a class was
erased, IRA when a style was. A point is on the front when no other point is at least as good on
both and better on one. A method's hypervolume is the area its points dominate in
[0, 1] × [0, 1] (both axes as shares), the usual one-number summary of a front; with FID, a
second one uses 1 − FID/FID_max (FID_max the largest FID of the sweep) as the utility.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

from erase.balancers import BALANCERS
from erase.config import TrainConfig, unread_settings
from erase.config_args import unwrap_optional
from pipelines.files import atomic_path, comparable_setting, write_json_atomic, write_text_atomic
from pipelines.generate import safe_name
from pipelines.ownership import OwnedFolder, check_outside
from prompts import InputError

if typing.TYPE_CHECKING:  # imported where used: `erase sweep --help` stays quick
    from erase.loop import ErasureRun
    from eval.config import EvalConfig

SETTINGS_NAME = "sweep.json"  # the evaluation settings, checked on --resume
SWEEP_NAMES = ["runs", "eval", "front.json", "front.md", "front.png", SETTINGS_NAME]
# EvalConfig's fields that a sweep sets, by the sweep's own flags.
EVAL_FLAGS = {
    "prompts": "--prompts",
    "judge": "--judge",
    "clip_weights": "--clip-weights",
    "classifier": "--classifier",
    "images_per_prompt": "--images-per-prompt",
    "steps": "--eval-steps",
}
# What a sweep of the default model tries when no --grid is given: ESD alone, then the default
# method and the two it is compared with, each at the three knob values of the README's
# 14-concept fronts (scripts/fronts_tradeoff.py). Other models have other loss scales: give --grid.
DEFAULT_GRID = [
    "none",
    "eupmu-fast:lambda_lr=1e4,3e4,1e5",
    "weighted:retain_weight=3,10,30",
    "eupmu:retain_budget=0,3e-6,1e-5",
]
# Train settings that a sweep sets per point, or that belong to the sweep itself.
PER_POINT = ("output", "method", "seed", "resume", "overwrite", "progress")
# Settings a grid may not turn: Accelerate's precision belongs to the processes `accelerate
# launch` started, so a second point with another one fails after the first has trained.
FIXED_PER_SWEEP = ("mixed_precision",)


@dataclass
class SweepConfig:
    """What `erase sweep` does besides the fixed train settings (those are a ``TrainConfig``)."""

    output: str = field(metadata={"help": "sweep folder: runs/, eval/, front.json, front.md, front.png"})
    grid: list[str] = field(
        default_factory=list,
        metadata={
            "help": "METHOD or METHOD:SETTING=V1,V2,... (repeat for several; default model default: "
            + " ".join(DEFAULT_GRID)
            + ")"
        },
    )
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "seeds of every grid point"})
    prompts: str | None = field(
        default=None,
        metadata={"help": "evaluation prompt CSV with class/style columns (default model: default/digits)"},
    )
    judge: typing.Literal["auto", "digit-style", "open-clip", "transformers"] = field(
        default="auto", metadata={"help": "classifier for UA and kept accuracy (as `erase eval --judge`)"}
    )
    clip_weights: str | None = field(default=None, metadata={"help": "local open_clip weights for the open-clip judge"})
    classifier: str | None = field(
        default=None, metadata={"help": "classifier folder for --judge transformers (as `erase eval --classifier`)"}
    )
    images_per_prompt: int = field(default=10, metadata={"help": "images per evaluation prompt and model"})
    eval_steps: int = field(default=20, metadata={"help": "sampler steps of the evaluation images"})
    resume: bool = field(default=False, metadata={"help": "continue a sweep: reuse finished runs, resume cut ones"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    def __post_init__(self) -> None:
        if not self.seeds:
            raise InputError("--seeds needs at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise InputError(f"--seeds {self.seeds} repeats a seed; give each once")


@dataclass(frozen=True)
class GridPoint:
    method: str
    setting: str | None  # the TrainConfig field the grid turns, or None (the method alone)
    value: float | int | str | None  # a number, or one of a choice setting's names

    @property
    def _shown(self) -> str:
        return self.value if isinstance(self.value, str) else f"{self.value:g}"

    @property
    def label(self) -> str:
        return self.method if self.setting is None else f"{self.method} {self.setting}={self._shown}"

    @property
    def curve(self) -> str:
        """The front this point belongs to: its method's over a number's values, but each choice's
        own (``eupmu-fast x_source=trajectory``), since a bank and a trajectory are two methods
        to compare, not two points of one."""
        return self.label if isinstance(self.value, str) else self.method

    def run_name(self, seed: int) -> str:
        knob = "" if self.setting is None else f"-{self.setting}-{self._shown}"
        return safe_name(f"{self.method}{knob}-s{seed}", limit=100)

    def overrides(self) -> dict:
        return {"method": self.method} | ({} if self.setting is None else {self.setting: self.value})


def grid_settings() -> dict[str, type | tuple[str, ...]]:
    """What a grid may turn: each TrainConfig field that is a number (its type) or a choice
    (its names: ``x_source``, ``retain_probe``, ``loss``, ...), less what each run sets itself."""
    hints = typing.get_type_hints(TrainConfig)
    settings = {}
    for f in dataclasses.fields(TrainConfig):
        kind = unwrap_optional(hints[f.name])
        if f.name in PER_POINT or f.name in FIXED_PER_SWEEP:
            continue
        if kind in (float, int):
            settings[f.name] = kind
        elif typing.get_origin(kind) is typing.Literal:
            settings[f.name] = typing.get_args(kind)
    return dict(sorted(settings.items()))


def _grid_value(entry: str, setting: str, kind: type | tuple[str, ...], text: str) -> float | int | str:
    if isinstance(kind, tuple):
        if text not in kind:
            raise InputError(f"--grid {entry!r}: {setting} has no choice {text!r}; choose from {', '.join(kind)}")
        return text
    try:
        return kind(text)
    except ValueError:
        raise InputError(f"--grid {entry!r}: {text!r} is not a {kind.__name__}") from None


def parse_grid(entries: list[str]) -> list[GridPoint]:
    """``["eupmu:retain_budget=0,1e-6", "eupmu-fast:x_source=bank,trajectory", "none"]`` → grid
    points, checked against the balancers and TrainConfig's numeric and choice fields; a wrong
    entry is named with the fix."""
    settings = grid_settings()
    points: list[GridPoint] = []
    for entry in entries:
        method, _, knob = entry.partition(":")
        if method not in BALANCERS:
            raise InputError(f"--grid {entry!r}: unknown method {method!r}; choose one of {', '.join(BALANCERS)}")
        if not knob:
            points.append(GridPoint(method, None, None))
            continue
        setting, equals, values = knob.partition("=")
        setting = setting.strip().replace("-", "_")
        if not equals or setting not in settings:
            raise InputError(
                f"--grid {entry!r}: expected METHOD:SETTING=V1,V2,... with SETTING one of {', '.join(settings)}"
            )
        for text in values.split(","):
            points.append(GridPoint(method, setting, _grid_value(entry, setting, settings[setting], text.strip())))
    if len(set(points)) != len(points):
        raise InputError(f"--grid {' '.join(entries)} names a point twice; give each once")
    return points


def plan_runs(sweep: SweepConfig, train: dict, points: list[GridPoint]) -> list[tuple[GridPoint, int, TrainConfig]]:
    """Every (point, seed) as a checked TrainConfig, before anything is written: a bad setting
    anywhere in the grid stops the sweep with nothing on disk."""
    runs_dir = Path(sweep.output) / "runs"
    planned, named = [], {}
    for point in points:
        for seed in sweep.seeds:
            output = runs_dir / point.run_name(seed)
            if output.name in named:  # 1e-6 and 1e6 both name a folder "…1e-06…"; 6 digits are kept
                raise InputError(
                    f"--grid points {named[output.name].label} and {point.label} would share the run folder "
                    f"{output.name}; give values that differ in their first 6 digits, or sweep them separately"
                )
            named[output.name] = point
            values = train | point.overrides() | {"output": str(output), "seed": seed, "progress": sweep.progress}
            values["resume"] = (output / "train_config.json").is_file()
            try:
                planned.append((point, seed, TrainConfig(**values)))
            except InputError as err:
                raise InputError(f"--grid point {point.label}: {err}") from None
    return planned


def run_sweep(sweep: SweepConfig, train: dict) -> dict:
    """Train every point (reusing finished runs), evaluate them all, write the front. The sweep
    folder is locked while it runs: two sweeps with other grids would write one front from both."""
    from pipelines.lock import output_lock
    from pipelines.processes import process_state

    with output_lock(sweep.output, enabled=process_state().is_main_process):
        return _run_sweep(sweep, train)


AFRESH = "start the sweep afresh in another --output"  # a run's refused resume: sweep has no --overwrite


def _run_sweep(sweep: SweepConfig, train: dict) -> dict:
    from erase.loop import ErasureRun
    from erase.loop import train as train_run
    from eval.config import EvalConfig
    from eval.runner import evaluate
    from pipelines.processes import process_state

    output = Path(sweep.output)
    points = parse_grid(sweep.grid or (DEFAULT_GRID if train.get("model", "default") == "default" else []))
    if not points:
        raise InputError("give --grid METHOD:SETTING=V1,V2,... (the default grid is for the default model only)")
    folder = OwnedFolder.inspect(output, "sweep")
    if folder.marked and not sweep.resume:
        raise InputError(f"--output {output} holds a sweep; use --resume to continue it, or another folder")
    folder.check_claimable(SWEEP_NAMES)
    check_outside(output, {"--model": train.get("model"), "--forget": train.get("forget"), "--prompts": sweep.prompts})
    planned = plan_runs(sweep, train, points)
    checked = [ErasureRun(config, afresh=AFRESH) for _, _, config in planned]
    for run in checked:  # every run's own checks (prompts, folders, a changed setting) first
        run.check_inputs()
    evaluation_config = EvalConfig(
        runs=[c.output for _, _, c in planned],
        output=str(output / "eval"),
        prompts=sweep.prompts,
        judge=sweep.judge,
        clip_weights=sweep.clip_weights,
        classifier=sweep.classifier,
        images_per_prompt=sweep.images_per_prompt,
        steps=sweep.eval_steps,
        model_config=train.get("model_config"),
        allow_pickle=train.get("allow_pickle", False),
        progress=sweep.progress,
    )
    check_evaluable(evaluation_config, checked, folder)
    if process_state().is_main_process:
        for note in unread_by_every_run(planned, set(train)):
            print(note, file=sys.stderr)
    folder.claim(SWEEP_NAMES)
    write_json_atomic(output / SETTINGS_NAME, eval_settings(evaluation_config))
    (output / "runs").mkdir(exist_ok=True)
    for index, (point, seed, config) in enumerate(planned, 1):
        print(f"sweep: run {index}/{len(planned)}: {point.label}, seed {seed} → {config.output}", flush=True)
        train_run(config, afresh=AFRESH)
    evaluation = evaluate(evaluation_config)
    if not evaluation.metrics:  # not the main process
        return {}
    front = summarise(planned, evaluation.metrics["runs"])
    write_json_atomic(output / "front.json", front)
    write_text_atomic(output / "front.md", front_table(front))
    plot_front(front, output / "front.png")
    return front


def unread_by_every_run(planned: list[tuple[GridPoint, int, TrainConfig]], given: set[str]) -> list[str]:
    """`erase train`'s note for each fixed setting that no run of the sweep reads (a flag some
    grid points read and others do not is what a comparison across methods passes on purpose)."""
    per_run = [unread_settings(config, given, "this sweep", method_option="--grid") for _, _, config in planned]
    return [note for note in per_run[0] if all(note in notes for notes in per_run[1:])] if per_run else []


def eval_settings(evaluation: EvalConfig) -> dict:
    """What the sweep's images and scores depend on besides the runs: a resumed sweep must use
    the same, or its front would mix points scored two ways. Keyed by the sweep's flags."""
    return {flag: comparable_setting(getattr(evaluation, name)) for name, flag in EVAL_FLAGS.items()}


def check_evaluable(evaluation: EvalConfig, runs: list[ErasureRun], folder: OwnedFolder) -> None:
    """Before any run trains: the evaluation's prompt list, judge and report folder, and, on a
    resumed sweep, the same evaluation settings as before (the sweep has no --overwrite; a new
    evaluation of its runs is `erase eval`'s job)."""
    from eval.runner import REPORT_NAMES, judged_inputs

    output = Path(evaluation.output).parent
    recorded = output / SETTINGS_NAME
    if folder.owns(SETTINGS_NAME) and recorded.is_file():
        try:
            before = json.loads(recorded.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            before = None
        if not isinstance(before, dict):
            raise InputError(f"{recorded} is damaged; delete it (the sweep writes it again) and resume")
        now = eval_settings(evaluation)
        changed = [flag for flag in now if flag in before and before[flag] != now[flag]]
        if changed:
            flag = changed[0]
            raise InputError(
                f"--output {output} was evaluated with {flag} {before[flag]}, not {now[flag]}; resume with the "
                f"same, or score its runs anew: erase eval {output}/runs/* --output ANOTHER-FOLDER"
            )
    OwnedFolder.inspect(evaluation.output, "report").check_claimable(REPORT_NAMES)
    first = runs[0]  # every run of a sweep erases the same prompts (earlier steps' too) from the same model
    erased = list(dict.fromkeys([*first.lineage.forget_prompts, *first.forget_prompts]))
    judged_inputs(evaluation, first.lineage.root, {Path(r.config.output).name: erased for r in runs})


def summarise(planned: list[tuple[GridPoint, int, TrainConfig]], scored: dict) -> dict:
    """Per run and per grid point (mean over seeds): UA, kept accuracy, FID; the front and
    each method's hypervolumes."""
    from eval.report import headline_ua_key, headline_utility_key

    runs, by_point = [], {}
    for point, seed, config in planned:  # the UA and kept accuracy the report's scatter shows
        metrics = scored[Path(config.output).name]["erased_model"]
        kept_key = headline_utility_key(metrics) or "IRA"
        ua_key = headline_ua_key(metrics)  # UA_class for one concept with two labels (plain threes)
        row = {"point": point.label, "method": point.method, "seed": seed, "run": config.output}
        row |= {"UA": metrics[ua_key]["value"], "UA_metric": ua_key}
        row |= {"kept": metrics.get(kept_key, {}).get("value"), "kept_metric": kept_key}
        row["FID"] = metrics.get("FID_vs_base", {}).get("value")
        runs.append(row)
        by_point.setdefault(point, []).append(row)
    points = []
    for point, rows in by_point.items():
        entry = {"point": point.label, "method": point.method, "curve": point.curve}
        entry |= {"setting": point.setting, "value": point.value}
        for key in ("UA", "kept", "FID"):
            values = [r[key] for r in rows if r[key] is not None]
            entry[key] = statistics.mean(values) if values else None
            entry[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
        entry["seeds"] = len(rows)
        points.append(entry)
    scored_points = [p for p in points if p["UA"] is not None and p["kept"] is not None]
    for p in points:
        p["on_front"] = p in scored_points and not any(_dominates(q, p) for q in scored_points)
    fids = [p["FID"] for p in scored_points if p["FID"] is not None]
    fid_max = max(fids) if fids and max(fids) > 0 else None
    methods = {}
    for method in dict.fromkeys(p["curve"] for p in points):  # a method, or a method with one choice
        mine = [p for p in scored_points if p["curve"] == method]
        methods[method] = {
            "points": len(mine),
            "hypervolume_UA_kept": hypervolume([(p["UA"], p["kept"]) for p in mine]),
            "hypervolume_UA_FID": hypervolume([(p["UA"], 1 - p["FID"] / fid_max) for p in mine if p["FID"] is not None])
            if fid_max
            else None,
        }
    return {"runs": runs, "points": points, "methods": methods, "fid_max": fid_max}


def _dominates(a: dict, b: dict) -> bool:
    return a["UA"] >= b["UA"] and a["kept"] >= b["kept"] and (a["UA"] > b["UA"] or a["kept"] > b["kept"])


def hypervolume(points: list[tuple[float, float]]) -> float:
    """Area of [0, 1]² dominated by ``points`` (both coordinates maximised, reference (0, 0)):
    the union of the rectangles [0, x] × [0, y]."""
    area, height = 0.0, 0.0
    for x, y in sorted(((max(x, 0.0), max(y, 0.0)) for x, y in points), reverse=True):  # widest first
        if y > height:
            area += x * (y - height)
            height = y
    return area


def front_table(front: dict) -> str:
    def pct(value, std=None):
        if value is None:
            return "–"
        return f"{100 * value:.1f}%" + (f" ± {100 * std:.1f}" if std is not None else "")

    lines = ["# Erasure-vs-utility front", "", "| point | seeds | UA | kept | FID vs base | on the front |"]
    lines.append("|---|---|---|---|---|---|")
    for p in front["points"]:
        fid = "–" if p["FID"] is None else f"{p['FID']:.3g}"
        lines.append(
            f"| {p['point']} | {p['seeds']} | {pct(p['UA'], p['UA_std'])} | {pct(p['kept'], p['kept_std'])} | "
            f"{fid} | {'yes' if p['on_front'] else ''} |"
        )
    first = front["runs"][0] if front["runs"] else {}
    ua = f"UA = {first['UA_metric']}, " if first.get("UA_metric", "UA") != "UA" else ""
    kept = first.get("kept_metric", "kept")
    lines += ["", f"{ua}kept = {kept}. Hypervolume: the share of [0, 1]² a method's points dominate.", ""]
    lines += ["| method | points | hypervolume UA × kept | hypervolume UA × (1 − FID/FID_max) |", "|---|---|---|---|"]
    for method, m in front["methods"].items():
        hv_fid = "–" if m["hypervolume_UA_FID"] is None else f"{m['hypervolume_UA_FID']:.3f}"
        lines.append(f"| {method} | {m['points']} | {m['hypervolume_UA_kept']:.3f} | {hv_fid} |")
    return "\n".join(lines) + "\n"


def plot_front(front: dict, target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for method in front["methods"]:
        mine = sorted((p["UA"], p["kept"]) for p in front["points"] if p["curve"] == method and p["UA"] is not None)
        if mine:
            ax.plot(*zip(*mine, strict=True), marker="o", label=method)
    on = sorted((p["UA"], p["kept"]) for p in front["points"] if p["on_front"])
    if on:
        ax.plot(*zip(*on, strict=True), linestyle="none", marker="o", markersize=12, fillstyle="none", color="black",
                label="front")  # fmt: skip
    ax.set_xlabel("UA (higher = better erased)")
    ax.set_ylabel("kept accuracy (higher = more kept)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
