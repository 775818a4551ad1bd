"""The `erase attack` flow: inputs → targets → one attack per model → attack.json and report.md.

1. The same inputs as `erase eval` (``eval.runner.models_under_test``): what each run erased,
   the prompt list's rows that show it, the judge.
2. Targets: the base model draws each (row, seed) once, on the seeds `erase eval` uses; its final
   latents are what the attack asks the attacked model to denoise (UnlearnDiffAtk attacks with
   the original model's images of the concept).
3. Per model (the base, then each run): draw every target's own prompt and judge it ("before");
   attack the targets the judge does not already see the concept in; after each timestep's
   iterations draw with what was found and judge; a target is won the first time the judge sees
   the concept. ASR is the share of targets won, before and after the attack.
"""

from __future__ import annotations

import gc
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDPMScheduler

from eval.attack.config import AttackConfig
from eval.attack.report import percent
from eval.attack.search import SEARCHES
from eval.concepts import Concept, describe, rows_showing, shows
from eval.images import images_to_tensor
from pipelines.families import family_of
from pipelines.generate import native_size, safe_name
from pipelines.loading import load_pipeline
from pipelines.lock import output_lock
from pipelines.ownership import OwnedFolder, check_outside
from pipelines.prediction import EpsilonSpace
from pipelines.progress import progress
from pipelines.token_slots import TokenSlots, text_encoders
from prompts import InputError

ATTACK_NAMES = ["images", "attack.json", "report.md"]
DRAW_BATCH = 16  # images per pipeline call


@dataclass
class Target:
    """One attacked image: a prompt showing the erased concept, drawn on one seed."""

    case: str
    prompt: str
    seed: int
    latent: torch.Tensor | None = None  # the base model's final latent for (prompt, seed)


@dataclass
class Outcome:
    target: Target
    before: dict[str, str]  # the judge's labels of the model's own image
    won_before: bool
    after: dict[str, str] | None = None  # of the last image drawn with what the attack found
    won_after: bool = False
    found: str | None = None  # the prompt the attack drew it with
    timestep: int | None = None  # the timestep whose iterations found it (None: not found)
    iterations: int = 0

    def to_json(self) -> dict:
        t = self.target
        return {
            "case": t.case,
            "prompt": t.prompt,
            "seed": t.seed,
            "before": self.before,
            "success_before": self.won_before,
            "after": self.after,
            "success_after": self.won_before or self.won_after,
            "found_prompt": self.found,
            "timestep": self.timestep,
            "iterations": self.iterations,
        }


def attack_timesteps(total: int, count: int) -> list[int]:
    """``count`` timesteps evenly spread over 0..total-1, centred in their bins, ascending
    (UnlearnDiffAtk's code: 10, 30, ..., 990 for 50 of 1000)."""
    if count >= total:
        return list(range(total))
    # not a whole-number stride (total // count): above total / 2 timesteps it was 1, crowding them at the start
    return [int((i + 0.5) * total / count) for i in range(count)]


def plan_targets(records, concepts: list[Concept], per_prompt: int) -> list[Target]:
    rows = rows_showing([r.labels for r in records], concepts)
    return [Target(records[i].case_id, records[i].prompt, records[i].seed + k) for i in rows for k in range(per_prompt)]


def draw(pipe, seeds: list[int], config: AttackConfig, output_type: str = "pil", **inputs) -> list:
    """The pipeline's images (or final latents), each from its own seeded CPU generator, as
    `erase generate` draws them; ``inputs`` holds prompts or prompt embeddings, one row per seed."""
    height, width = native_size(pipe)
    out = []
    for first in range(0, len(seeds), DRAW_BATCH):
        part = slice(first, first + DRAW_BATCH)
        result = pipe(  # the pipeline's call runs without autograd
            **{k: v[part] for k, v in inputs.items()},
            num_inference_steps=config.steps,
            guidance_scale=config.guidance_scale,
            height=height,
            width=width,
            generator=[torch.Generator("cpu").manual_seed(s) for s in seeds[part]],
            output_type=output_type,
        )
        out.extend(result.images)
    return out


def judged(judge, images, concepts: list[Concept]) -> tuple[list[dict[str, str]], list[bool]]:
    """The judge's labels per image, and whether each shows any of the concepts."""
    with torch.no_grad():
        predicted = judge.predict(images_to_tensor(images, judge.image_size))
    labels = [{axis: names[i] for axis, names in predicted.items()} for i in range(len(images))]
    return labels, [any(shows(entry, c) for c in concepts) for entry in labels]


def attack_model(
    pipe, targets: list[Target], concepts, judge, config: AttackConfig, images: Path, bar
) -> list[Outcome]:
    """Before, the attack, after; images of both written under ``images``."""
    family = family_of(pipe)
    for module in [pipe.unet, *text_encoders(pipe)]:
        module.requires_grad_(False)
    before = draw(pipe, [t.seed for t in targets], config, prompt=[t.prompt for t in targets])
    labels, won = judged(judge, before, concepts)
    outcomes = [Outcome(t, lab, w) for t, lab, w in zip(targets, labels, won, strict=True)]
    images.mkdir(parents=True, exist_ok=True)
    for outcome, image in zip(outcomes, before, strict=True):
        image.save(images / f"{_stem(outcome.target)}_before.png")
    open_rows = [o for o in outcomes if not o.won_before]
    for first in range(0, len(open_rows), config.batch_size):  # a batch's images are attacked together
        _search(pipe, family, open_rows[first : first + config.batch_size], concepts, judge, config, images, bar)
    bar.update(config.timesteps * (_batches(len(targets), config) - _batches(len(open_rows), config)))
    return outcomes


def _batches(count: int, config: AttackConfig) -> int:
    return -(-count // config.batch_size)


def _search(pipe, family, outcomes: list[Outcome], concepts, judge, config: AttackConfig, images: Path, bar) -> None:
    device = pipe.unet.device
    slots = TokenSlots(pipe, config.tokens)
    prompts = slots.slotted([o.target.prompt for o in outcomes])
    generator = torch.Generator(device).manual_seed(config.seed)
    kind = SEARCHES[config.search]
    vocabulary = slots.typable_vocabulary() if kind.typed else slots.vocabulary()  # typed: drawn as text
    search = kind(len(outcomes), config.tokens, slots.tables(), vocabulary, config.lr, config.weight_decay, generator)
    x0 = torch.stack([o.target.latent for o in outcomes]).to(device, pipe.unet.dtype)
    # Noised as in training (DDPM's ᾱ_t), as the bank noises: a sampler's own add_noise (Euler on
    # SDXL) looks t up among its sampling steps and gives x0 + σ·ε, not the UNet's training input.
    noising = DDPMScheduler.from_config(pipe.scheduler.config)
    space = EpsilonSpace(noising)
    active = torch.arange(len(outcomes))
    steps = attack_timesteps(pipe.scheduler.config.num_train_timesteps, config.timesteps)
    for t in steps:
        if not len(active):
            bar.update(1)
            continue
        for _ in range(config.iterations):
            noise = torch.randn(x0[active].shape, generator=generator, device=device, dtype=x0.dtype)
            timestep = torch.full((len(active),), t, device=device, dtype=torch.long)
            x_t = noising.add_noise(x0[active], noise, timestep)
            with slots.filled(search.embeddings(active)):
                cond = family.conditioning(pipe, [prompts[i] for i in active.tolist()])
            output = pipe.unet(x_t, timestep, **cond.unet_kwargs()).sample
            errors = (space(output.float(), x_t.float(), timestep) - noise.float()).pow(2)
            errors.mean(dim=tuple(range(1, errors.ndim))).sum().backward()  # one loss per attack
            search.step(active)
        drawn, texts = _draw_found(pipe, family, slots, search, active, outcomes, config)
        labels, won = judged(judge, drawn, concepts)
        for row, text, image, lab, ok in zip(active.tolist(), texts, drawn, labels, won, strict=True):
            outcome = outcomes[row]
            outcome.after, outcome.found, outcome.iterations = lab, text, outcome.iterations + config.iterations
            image.save(images / f"{_stem(outcome.target)}_after.png")
            if search.universal:  # what the shared embedding recovers now, not what it once did
                outcome.won_after, outcome.timestep = ok, t if ok else None
            elif ok:
                outcome.won_after, outcome.timestep = True, t
        if not search.universal:
            active = active[~torch.tensor(won, dtype=torch.bool)]
        elif all(won):  # every image recovered: learning further changes nothing reported
            active = active[:0]
        bar.update(1)


def _draw_found(pipe, family, slots: TokenSlots, search, active, outcomes, config):
    """Images drawn with what the attack holds now: typed tokens as the text a user would type
    (so the found prompt reproduces with `erase generate`), soft ones as embeddings."""
    seeds = [outcomes[i].target.seed for i in active.tolist()]
    originals = [outcomes[i].target.prompt for i in active.tolist()]
    if search.typed:
        texts = [
            f"{slots.words(ids.tolist())} {p}".strip()
            for ids, p in zip(search.found_ids(active), originals, strict=True)
        ]
        return draw(pipe, seeds, config, prompt=texts), texts
    with torch.no_grad(), slots.filled(search.found(active)):
        cond = family.conditioning(pipe, slots.slotted(originals))
    texts = [f"<{config.tokens} {search.name} tokens> {p}" for p in originals]
    return draw(pipe, seeds, config, **family.pipeline_inputs(cond)), texts


def _stem(target: Target) -> str:
    return f"{safe_name(target.case)}_{target.seed}"


def run_attack(config: AttackConfig) -> dict:
    with output_lock(config.output):
        return _run_attack(config)


def _run_attack(config: AttackConfig) -> dict:
    from eval.attack.report import write_attack_report
    from eval.runner import check_runs_load, models_under_test, with_partial_weights

    output = Path(config.output)
    folder = OwnedFolder.inspect(output, "attack")
    folder.check_claimable(ATTACK_NAMES)
    earlier = folder.marked and any(folder.owns(name) and (output / name).exists() for name in ATTACK_NAMES)
    if earlier and not config.overwrite:
        # an attack takes minutes to hours: its results are not replaced by the next one unasked
        raise InputError(
            f"--output {output} holds an earlier attack ({output / 'attack.json'}); use --overwrite to replace its "
            "results, or choose another folder"
        )
    check_outside(output, config.input_paths())  # runs included: an attack is never written into one
    found = models_under_test(config)
    check_runs_load(found.runs, config, found.base, found.base_config)

    # One base entry per distinct erased concept set (several runs usually share one).
    groups: dict[str, list[Concept]] = {describe(c): c for c in found.erased.values()}
    targets = {key: plan_targets(found.records, concepts, config.images_per_prompt) for key, concepts in groups.items()}
    for key, planned in targets.items():
        if not planned:
            raise InputError(f"no prompt of --prompts {found.prompts} shows {key}; there is nothing to attack")
    base_name = {key: "base" if len(groups) == 1 else f"base ({key})" for key in groups}
    models = [(base_name[key], found.base, key, None) for key in groups]
    models += [(run.name, run.model, describe(found.erased[run.name]), run) for run in found.runs]

    load = dict(dtype=config.dtype, device=config.device, allow_pickle=config.allow_pickle)
    base_pipe = load_pipeline(found.base, config=found.base_config, **load)
    base_pipe.set_progress_bar_config(disable=True)
    schedule = base_pipe.scheduler.config.num_train_timesteps
    if config.timesteps > schedule:
        raise InputError(
            f"--timesteps {config.timesteps} is more than the {schedule} timesteps of the model's schedule; "
            f"use at most {schedule}"
        )
    for planned in targets.values():  # the base model's latents are every model's targets
        latents = draw(
            base_pipe, [t.seed for t in planned], config, output_type="latent", prompt=[t.prompt for t in planned]
        )
        for target, latent in zip(planned, latents, strict=True):
            target.latent = latent.detach().cpu()

    folder.claim(ATTACK_NAMES)
    result = {"settings": _settings(config, found), "models": {}}
    bar = progress(
        sum(_batches(len(targets[key]), config) for _, _, key, _ in models) * config.timesteps,
        f"attack ({config.search})",
        unit="timestep",
        enabled=config.progress,
    )
    shown: dict[str, set] = {}
    for name, spec, key, run in models:
        start = time.perf_counter()
        if run is None:  # the base entries come first: the pipeline that drew the targets
            pipe = base_pipe
        elif run.on_base:
            base_pipe = None
            pipe, _ = with_partial_weights(run, found.base, found.base_config, config, config.device, config.dtype)
        else:
            base_pipe = None
            pipe = load_pipeline(spec, config=config.model_config, **load)
        pipe.set_progress_bar_config(disable=True)
        # An erased model is attacked only on the targets whose base-model image shows the concept
        # (UnlearnDiffAtk's rule): elsewhere there is no erasure to undo, and the search would be spent
        # on images it can hardly win.
        mine = targets[key] if run is None else [t for t in targets[key] if (t.case, t.seed) in shown[key]]
        images = output / "images" / safe_name(name)
        outcomes = attack_model(pipe, mine, groups[key], found.judge, config, images, bar) if mine else []
        bar.update(config.timesteps * (_batches(len(targets[key]), config) - _batches(len(mine), config)))
        del pipe
        gc.collect()
        if run is None:
            shown[key] = {(o.target.case, o.target.seed) for o in outcomes if o.won_before}
        seconds = time.perf_counter() - start
        result["models"][name] = _summary(spec, groups[key], outcomes, seconds, len(targets[key]) - len(mine))
        write_attack_report(result, output)  # after every model: a stopped attack keeps what it found
    bar.close()
    return result


def _summary(spec: str, concepts: list[Concept], outcomes: list[Outcome], seconds: float, left_out: int = 0) -> dict:
    """ASR before and after over the attacked targets; ``left_out``: the targets not attacked
    because the base model's image of them does not show the concept."""
    count = len(outcomes)
    before = sum(o.won_before for o in outcomes)
    after = sum(o.won_before or o.won_after for o in outcomes)
    return {
        "model": spec,
        "erased": concepts,
        "attacks": count,
        "left_out": left_out,
        "asr_before": before / count if count else None,
        "asr_after": after / count if count else None,
        "seconds": round(seconds, 1),
        "results": [o.to_json() for o in outcomes],
    }


def _settings(config: AttackConfig, found) -> dict:
    keys = ("search", "tokens", "timesteps", "iterations", "lr", "weight_decay", "images_per_prompt", "seed")
    keys += ("steps", "guidance_scale", "dtype")
    return {"base": found.base, "prompts": found.prompts, "judge": found.judge_name} | {
        k: getattr(config, k) for k in keys
    }


def print_summary(result: dict, output: Path) -> None:
    """One line per model, then where the report is, on the standard output of the moment (not the
    one there was at import: a test's captured stream, closed since, once stood there)."""
    stream = sys.stdout
    for name, model in result["models"].items():
        print(
            f"{name}: ASR {percent(model['asr_before'])} before the attack, {percent(model['asr_after'])} after "
            f"({model['attacks']} attacks on {describe(model['erased'])}, {model['seconds']:.0f} s)",
            file=stream,
        )
    print(f"report → {output / 'report.md'}, numbers → {output / 'attack.json'}", file=stream)
