"""``erase eval``: generate with the base and each erased model on the same seeds, judge the
images, compute every registered metric, and write the report.

Flow: run folders → (base model, erased concept, prompt list) → images per model (through
``pipelines.generate``, resumable) → judge labels → metrics per run → metrics.json + report.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from erase.lineage import RUN_CONFIG, is_default_model, read_run_record, run_lineage
from eval.concepts import check_erased, infer_erased, rows_showing
from eval.config import EvalConfig, JudgedModels
from eval.images import load_images
from eval.judges import build_judge, check_judge_knows, check_judge_sees
from eval.metrics import METRICS, EvalContext, ModelImages
from pipelines.files import weights_stamp
from pipelines.generate import GenerateConfig, check_image_count, generate, read_manifest, safe_name
from pipelines.loading import check_model, load_pipeline, single_file_keys
from pipelines.lock import output_lock
from pipelines.ownership import OwnedFolder, check_outside
from pipelines.partial_weights import is_component_folder, is_whole_model
from pipelines.processes import process_state
from pipelines.progress import track
from prompts import InputError, load_prompts

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass
class RunInfo:
    """One model under evaluation and what it erased."""

    name: str
    model: str
    base: str | None
    forget_prompts: list[str]
    log: Path | None
    base_config: str | None = None  # the --model-config the run's single-file base was loaded with
    on_base: bool = False  # another tool's partial weights (a UNet-only state dict...), put onto --base


def read_run(spec: str, allow_pickle: bool = False, model_config: str | None = None) -> RunInfo:
    """A run folder's model, base and forget prompts; any other model spec stands alone. The
    name (a folder under images/) is made file-safe: a spec like ``..`` cannot escape --output."""
    path = Path(spec)
    name = safe_name(path.name or spec)
    if (path / RUN_CONFIG).is_file():
        config = read_run_record(path, f"is {spec} a run folder written by `erase train`?")
        log = path / "train_log.jsonl"
        lineage = run_lineage(path, config)  # a run erased from a run: every step, against the original
        return RunInfo(
            name, spec, lineage.root, lineage.forget_prompts, log if log.is_file() else None, lineage.root_config
        )
    if is_component_folder(path) or (path.is_file() and not is_whole_model(single_file_keys(path, allow_pickle))):
        return RunInfo(name, spec, None, [], None, on_base=True)  # ESD's, UCE's, AdvUnlearn's released weights
    check_model(spec, model_config, allow_pickle)
    return RunInfo(name, spec, None, [], None)


def unique_names(runs: list[RunInfo]) -> None:
    """Two runs named alike (``a/run`` and ``b/run``) get ``run`` and ``run-2``: each name is an
    image folder and a key of metrics.json. A new name is checked too (``run, run, run-2``)."""
    taken = {"base"}
    for run in runs:
        name, number = run.name, 1
        while name in taken:
            number += 1
            name = f"{run.name}-{number}"
        run.name = name
        taken.add(name)


@dataclass
class Evaluation:
    metrics: dict
    output: Path
    images_per_second: float | None


REPORT_NAMES = ["images", "figures", "metrics.json", "report.md", "report.html"]


@dataclass
class ModelsUnderTest:
    """What `erase eval` and `erase attack` resolve from their inputs before drawing anything."""

    runs: list[RunInfo]
    base: str
    base_config: str | None
    prompts: str
    records: list
    labels: dict[str, list[str]]
    erased: dict[str, list]  # run name → the concepts it erased
    clip: object | None
    judge_name: str
    judge: object


def models_under_test(config: JudgedModels) -> ModelsUnderTest:
    """Runs, their base and what each erased, the prompt list and the judge; every input
    checked (one line, exit 2) before anything is loaded onto an accelerator or written."""
    runs = [read_run(spec, config.allow_pickle, config.model_config) for spec in config.runs]
    unique_names(runs)
    bases = {r.base for r in runs if r.base}
    base = config.base or (bases.pop() if len(bases) == 1 else None)
    if base is None:
        raise InputError(
            "runs record different base models" if len(bases) > 1 else "no base model recorded; give --base MODEL"
        )
    base_config = config.model_config or next((r.base_config for r in runs if r.base == base and r.base_config), None)
    check_model(base, base_config, config.allow_pickle)
    if config.forget:
        forget = [r.prompt for r in load_prompts(config.forget)]
        for run in runs:
            run.forget_prompts = forget
    judged = judged_inputs(config, base, {r.name: r.forget_prompts for r in runs})
    return ModelsUnderTest(runs, base, base_config, **judged)


def judged_inputs(config: JudgedModels, base: str, forget: dict[str, list[str]]) -> dict:
    """The prompt list, what each run (name → its forget prompts) erased and the judge, each
    checked with one line. Needs no run on disk: `erase sweep` calls it before training, so a
    wrong --prompts or --judge is refused before hours of runs, not after them."""
    default_base = is_default_model(base)
    prompts = config.prompts or ("default/digits" if default_base else None)
    if prompts is None:
        raise InputError("give --prompts: a CSV with class and/or style columns saying what each prompt shows")
    records = load_prompts(prompts)
    check_image_count(len(records), config.images_per_prompt)
    labels = {axis: [r.labels[axis] for r in records if axis in r.labels] for axis in ("class", "style")}
    if not any(labels.values()):
        raise InputError(f"--prompts {prompts} has no class or style column; the erasure metrics need one")
    erased = {
        name: config.erased_concepts() if config.erased else infer_erased(prompts_of_run, records)
        for name, prompts_of_run in forget.items()
    }
    for concepts in erased.values():
        check_erased(concepts, labels, prompts, [r.labels for r in records])

    clip = _clip_encoder(config, default_base)  # one model serves CLIP score and the open-clip judge
    judge_name = config.judge if config.judge != "auto" else ("digit-style" if default_base else "open-clip")
    judge = build_judge(judge_name, labels, classifier=config.classifier, clip=clip)
    for concepts in erased.values():
        check_judge_sees(judge, judge_name, concepts)
    check_judge_knows(judge, judge_name, labels, prompts, [c for concepts in erased.values() for c in concepts])
    found = {"prompts": prompts, "records": records, "labels": labels, "erased": erased}
    return found | {"clip": clip, "judge_name": judge_name, "judge": judge}


def evaluate(config: EvalConfig) -> Evaluation:
    """Generate, judge, score and report; ``config.output`` is locked while it runs, and nothing
    is written into it before every input is checked and the first batch of images is drawn."""
    with output_lock(config.output, enabled=process_state().is_main_process):
        return _evaluate(config)


def _evaluate(config: EvalConfig) -> Evaluation:
    output = Path(config.output)
    report = OwnedFolder.inspect(output, "report")
    report.check_claimable(REPORT_NAMES)
    check_outside(output, config.input_paths())
    found = models_under_test(config)
    runs, base, base_config, prompts, judge = found.runs, found.base, found.base_config, found.prompts, found.judge
    erased, clip, judge_name = found.erased, found.clip, found.judge_name
    real = _real_images(config.real_images)
    attack = None
    if config.attack:
        from eval.attack.report import read_attack_summary

        attack = read_attack_summary(config.attack, base)
    if config.fid_features == "inception":
        from eval.inception import load_inception

        features = load_inception(config.fid_weights)
    else:
        features = judge if judge.feature_name else None

    check_runs_load(runs, config, base, base_config)

    # 1. Images, the same seeds for every model.
    models, generated, seconds = [], 0, 0.0
    for name, spec, is_base, run in [("base", base, True, None)] + [(r.name, r.model, False, r) for r in runs]:
        folder = output / "images" / name
        pipe = None
        if run is not None and run.on_base:
            pipe, weights = with_partial_weights(run, base, base_config, config, config.device, config.dtype)
            del weights  # applied: the pipeline holds the values now
            # the images depend on both files: another base, or either file changed in place, is not resumed
            spec = f"{spec} on {base} (weights {weights_stamp(spec)} on {weights_stamp(base)})"
        result = generate(
            GenerateConfig(
                prompts=prompts,
                output=str(folder),
                model=spec,
                images_per_prompt=config.images_per_prompt,
                seeding=config.seeding,
                steps=config.steps,
                guidance_scale=config.guidance_scale,
                batch_size=config.batch_size,
                dtype=config.dtype,
                device=config.device,
                allow_pickle=config.allow_pickle,
                model_config=base_config if is_base else config.model_config,
                overwrite=config.overwrite,
                progress=config.progress,
            ),
            pipe=pipe,
            lock=False,  # this command holds the report folder's lock
            before_write=lambda: report.claim(REPORT_NAMES),
        )
        del pipe
        generated, seconds = generated + result.generated, seconds + result.seconds
        models.append(ModelImages(name, folder, list(read_manifest(folder).values()), is_base=is_base))

    # Under several processes the images were shared out; judging and the report are the main
    # process's job.
    state = process_state()
    state.wait_for_everyone()
    if not state.is_main_process:
        return Evaluation({}, output, None)

    # 2. The judge's labels.
    for model in track(models, len(models), "judge", unit="model", enabled=config.progress):
        model.predictions = _judge(judge, model)

    # 3. Metrics per run (the base model is scored against each run's erased concept too).
    start = time.perf_counter()
    result = {"settings": _settings(config, base, prompts, judge_name, features, clip), "runs": {}}
    base_images = models[0]
    images_cache: dict = {}  # shared by every run's context: the base model's images load once
    for run, model in zip(runs, models[1:], strict=True):
        ctx = EvalContext(
            [base_images, model],
            erased[run.name],
            rows_showing(model.entries, erased[run.name]),
            judge,
            clip,
            features=features,
            real_images=real,
            image_cache=images_cache,
        )
        scores = {m.name: {} for m in ctx.models}
        for metric in METRICS.values():
            for m in ctx.models:
                scores[m.name] |= metric(ctx, m)
        result["runs"][run.name] = {
            "model": run.model,
            "erased": erased[run.name],
            "forget_images": len(ctx.forget_rows),
            "retain_images": len(ctx.retain_rows),
            "base": scores["base"],
            "erased_model": scores[model.name],
            "train_log": str(run.log) if run.log else None,
        }
    result["metrics_seconds"] = round(time.perf_counter() - start, 1)
    if attack is not None:
        result["attack"] = attack
    rate = generated / seconds if generated and seconds > 0 else None
    result["generation"] = {"images_generated": generated, "seconds": round(seconds, 1), "images_per_second": rate}

    from eval.report import write_report

    write_report(result, models, runs, output)
    return Evaluation(result, output, rate)


@torch.no_grad()
def _judge(judge, model: ModelImages, batch: int = 256) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {axis: [] for axis in judge.axes}
    rows = list(range(len(model.entries)))
    for first in range(0, len(rows), batch):
        images = load_images(model.paths(rows[first : first + batch]), size=judge.image_size)
        for axis, names in judge.predict(images).items():
            out[axis] += names
    return out


def with_partial_weights(run: RunInfo, base: str, base_config, config: EvalConfig, device: str, dtype: str):
    """The base pipeline with another tool's partial weights put on it, in memory."""
    from pipelines.partial_weights import load_partial

    pipe = load_pipeline(base, dtype=dtype, device=device, config=base_config, allow_pickle=config.allow_pickle)
    weights = load_partial(run.model, pipe, config.allow_pickle)
    weights.apply(pipe)
    return pipe, weights


def check_runs_load(runs: list[RunInfo], config: EvalConfig, base: str, base_config) -> None:
    """Load every evaluated model once before anything is drawn: the base model's images would
    otherwise be written (minutes on a real model) before a damaged or unfinished run is found.
    Costs one extra load per run, on the CPU, released at once. Another tool's partial weights
    are checked against the base tensor by tensor, and what was recognised is said."""
    import gc

    for run in runs:
        if run.on_base:
            pipe, weights = with_partial_weights(run, base, base_config, config, "cpu", "float32")
            if process_state().is_main_process:
                print(f"note: {weights.describe()}, on base {base}", file=sys.stderr)
            del pipe, weights
            gc.collect()
            continue
        if (Path(run.model) / "train_config.json").is_file() and not (Path(run.model) / "model_index.json").is_file():
            raise InputError(
                f"{run.model} is an unfinished run (no model_index.json: it stopped before saving its model); "
                f"finish it with `erase train ... --output {run.model} --resume`, or evaluate another"
            )
        try:
            pipe = load_pipeline(run.model, device="cpu", config=config.model_config, allow_pickle=config.allow_pickle)
        except InputError:
            raise
        except Exception as err:  # a damaged weights file, a component that does not fit
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise InputError(f"cannot load {run.model} ({first}); nothing was drawn") from None
        del pipe
        gc.collect()


def _clip_encoder(config: JudgedModels, default_base: bool):
    """--clip-weights (a file for --clip-model, or an open_clip folder); for the default model
    without it, the shipped tiny CLIP, which was trained on the default model's own drawings.
    None: no CLIP score, and the open-clip judge will ask for weights."""
    from eval.clip_encoder import TINY_CLIP_DIR, load_clip_encoder, load_clip_folder

    if config.clip_weights:
        return load_clip_encoder(config.clip_architecture(), config.clip_weights, config.allow_pickle)
    if default_base and config.clip_model == "auto":
        return load_clip_folder(TINY_CLIP_DIR)
    return None


def _real_images(folder: str | None) -> list[Path] | None:
    if folder is None:
        return None
    path = Path(folder)
    if not path.is_dir():
        raise InputError(f"--real-images {path} is not a folder of images")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise InputError(f"--real-images {path} holds {len(files)} images; FID needs at least 2 (.png/.jpg/.webp)")
    return files


def _settings(config: EvalConfig, base: str, prompts: str, judge_name: str, features, clip) -> dict:
    return {
        "base": base,
        "prompts": prompts,
        "judge": judge_name,
        "fid_features": features.feature_name if features else None,
        "clip_model": clip.architecture if clip else None,
        "images_per_prompt": config.images_per_prompt,
        "seeding": config.seeding,
        "steps": config.steps,
        "guidance_scale": config.guidance_scale,
        "dtype": config.dtype,
    }
