"""Batch generation over a prompt list: seeded, resumable, with a JSONL manifest.

Image ``k`` of a record is drawn from its own CPU generator seeded ``record.seed + k``, so the
same record and seed give the same image whatever the batch it lands in, the device's random
stream, or how often the run was interrupted. Each image is written to a temporary name and
renamed; the manifest is rewritten atomically after every batch, so a killed run leaves only
complete images and a manifest without holes or duplicates. Rerunning skips finished images.

Under ``accelerate launch`` / ``torchrun`` with several processes (one per GPU), each round of
``batch_size × processes`` images is split between the processes; the main process gathers the
finished file names and alone writes the manifest.
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from accelerate.utils import gather_object

from pipelines.files import atomic_path, comparable_setting, weights_stamp, write_json_atomic, write_text_atomic
from pipelines.grid import save_grid
from pipelines.loading import MODEL_CONFIG_HELP, check_sampler_steps, load_pipeline, resolve_device
from pipelines.lock import output_lock
from pipelines.ownership import OwnedFolder, check_outside
from pipelines.processes import process_state
from pipelines.progress import progress
from pipelines.prompt_fit import truncation_warning
from prompts import InputError, PromptRecord, load_prompts
from prompts.checks import check_seed, check_types

MANIFEST_NAME = "manifest.jsonl"
SETTINGS_NAME = "generation.json"
# Settings that change the pixels: a folder made with other values is not resumed.
MAX_IMAGES = 1_000_000  # per folder: the manifest is held in memory
MAX_GRID_IMAGES = 1024  # beyond this a grid is unreadable and its canvas huge
_IMAGE_SETTINGS = (
    "model",
    "model_weights",  # a run folder retrained in place keeps its path (pipelines/files.weights_stamp)
    "model_config",
    "steps",
    "guidance_scale",
    "height",
    "width",
    "dtype",
    "negative_prompt",
    "seeding",
    "safety_checker",
)


SEEDING_HELP = (
    "per-image (default): image k of a row starts from its own generator seeded seed + k, so any image can be "
    "redrawn alone, in any batch, process or resumed run; esd: the k images of a row come from one generator "
    "seeded with the row's seed (one randn of k latents), as ESD's and UCE's scripts draw them, so images "
    "match theirs seed for seed"
)


@dataclass
class GenerateConfig:
    """What ``erase generate`` does; the CLI flags are these fields."""

    prompts: str = field(metadata={"help": "prompt list: a .txt/.csv file or a shipped list name (`erase prompts`)"})
    output: str = field(metadata={"help": "folder for the images and manifest.jsonl"})
    model: str = field(
        default="default",
        metadata={"help": "`default`, a diffusers folder, a .safetensors file or a cached hub id"},
    )
    images_per_prompt: int = field(default=1, metadata={"help": "images per record (see --seeding)"})
    seeding: Literal["per-image", "esd"] = field(
        default="per-image",
        metadata={"help": SEEDING_HELP},
    )
    steps: int = field(default=20, metadata={"help": "sampler steps"})
    guidance_scale: float = field(default=5.0, metadata={"help": "classifier-free guidance scale"})
    batch_size: int = field(default=16, metadata={"help": "images per pipeline call"})
    seed: int = field(default=0, metadata={"help": "first seed for .txt lists (CSV rows carry their own)"})
    height: int | None = field(default=None, metadata={"help": "image height (default: the model's)"})
    width: int | None = field(default=None, metadata={"help": "image width (default: the model's)"})
    negative_prompt: str = field(default="", metadata={"help": "negative prompt for every image"})
    dtype: Literal["float32", "float16", "bfloat16"] = field(
        default="float32", metadata={"help": "weights' precision (float16 needs CUDA)"}
    )
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    model_config: str | None = field(
        default=None,
        metadata={"help": MODEL_CONFIG_HELP},
    )
    allow_pickle: bool = field(default=False, metadata={"help": "allow .ckpt/.pt/.bin checkpoints (runs pickle!)"})
    overwrite: bool = field(
        default=False,
        metadata={"help": "start afresh if the folder holds images of other settings (deletes only erase's own files)"},
    )
    safety_checker: bool = field(
        default=False,
        metadata={
            "help": "run the safety checker a pipeline folder carries (SD 1.4-derived models): flagged images come "
            "out black. Off by default, and said so: an erasure is measured on what the model draws"
        },
    )
    grid: bool = field(default=False, metadata={"help": "also write grid.png, every image in manifest order"})
    grid_columns: int | None = field(default=None, metadata={"help": "images per grid row (default: about √n)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        check_types(self)
        for name in ("images_per_prompt", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not (self.guidance_scale == self.guidance_scale) or abs(self.guidance_scale) == float("inf"):
            raise InputError(f"--guidance-scale must be a finite number, got {self.guidance_scale}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (value < 8 or value % 8):
                raise InputError(f"--{name} must be a positive multiple of 8, got {value}")
        check_seed(self.seed)
        if self.images_per_prompt > MAX_IMAGES:
            raise InputError(f"--images-per-prompt must be at most {MAX_IMAGES:,}, got {self.images_per_prompt:,}")
        if self.grid_columns is not None and self.grid_columns < 1:
            raise InputError(f"--grid-columns must be at least 1, got {self.grid_columns}")
        resolve_device(self.device)


@dataclass(frozen=True)
class ImageJob:
    record: PromptRecord
    index: int  # k-th image of the record
    file: str  # relative to the output folder
    of: int = 1  # images of the record (esd seeding draws them as one batch of latents)
    seeding: str = "per-image"

    @property
    def seed(self) -> int:
        """The seed recorded for this image: its own (per-image), or its row's (esd)."""
        return self.record.seed if self.seeding == "esd" else self.record.seed + self.index

    def guidance(self, default: float) -> float:
        """The row's own guidance scale (a benchmark's evaluation_guidance), else the run's."""
        return default if self.record.guidance is None else self.record.guidance

    def manifest_entry(self, default_guidance: float) -> dict:
        entry = {**self.record.to_json(), "image_index": self.index, "seed": self.seed, "file": self.file}
        return entry | {"guidance": self.guidance(default_guidance)}


@dataclass
class GenerationResult:
    output: Path
    total: int
    generated: int
    skipped: int
    seconds: float
    processes: int = 1
    grid: Path | None = None

    @property
    def images_per_second(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else float("nan")


def safe_name(text: str, limit: int = 60) -> str:
    """A file-name stem from arbitrary text: no separators, dots, NULs or control characters."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")[:limit]
    return stem or "case"


def plan_jobs(records: list[PromptRecord], images_per_prompt: int, seeding: str = "per-image") -> list[ImageJob]:
    jobs, used = [], set()
    for record in records:
        stem = safe_name(record.case_id)
        if stem in used:  # two case ids that sanitise alike stay apart, and so does a renamed one
            number = len(used)  # from another id that happens to read like it ("a-2", "a", "a!")
            while f"{stem}-{number}" in used:
                number += 1
            stem = f"{stem}-{number}"
        used.add(stem)
        jobs.extend(
            ImageJob(record, k, f"{stem}_{k:03d}.png", images_per_prompt, seeding) for k in range(images_per_prompt)
        )
    return jobs


def read_manifest(output: Path) -> dict[str, dict]:
    """Manifest entries by file; tolerates a missing manifest."""
    path = output / MANIFEST_NAME
    if not path.is_file():
        return {}
    entries = {}
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if line.strip():
            try:
                entry = json.loads(line)
                entries[entry["file"]] = entry
            except (ValueError, KeyError, TypeError):
                raise InputError(
                    f"{path} line {number} is damaged (it is always written whole, so something else changed "
                    "it); delete the manifest to regenerate, or use --overwrite"
                ) from None
    return entries


def _reusable_manifest(output: Path, settings: dict, overwrite: bool) -> dict[str, dict] | None:
    """The manifest of a folder of ours whose images can be kept, or None when they were made
    with other settings (or its records are damaged) and --overwrite says to start afresh;
    refuses without --overwrite. Reads only."""
    path = output / SETTINGS_NAME
    try:
        old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        if not isinstance(old, dict):
            raise ValueError("not a table")
        entries = read_manifest(output)
    except (ValueError, UnicodeDecodeError, InputError) as err:
        if overwrite:
            return None
        what = str(err) if isinstance(err, InputError) else f"{path} is damaged (not valid JSON)"
        raise InputError(what.split(";")[0] + "; use --overwrite to start the folder afresh") from None
    changed = [
        k for k in _IMAGE_SETTINGS if k in old and comparable_setting(old[k]) != comparable_setting(settings.get(k))
    ]
    if changed == ["model_weights"] and not overwrite:
        raise InputError(
            f"{output} holds images of an earlier version of {settings['model']} (its weight files changed since "
            "they were drawn); use --overwrite to draw them again, or another --output"
        )
    if changed and not overwrite:
        k = changed[0]
        raise InputError(
            f"{output} holds images made with {k}={old.get(k)!r}, not {settings.get(k)!r}; "
            "use another --output, or --overwrite to start afresh"
        )
    return None if changed else entries


def _write_manifest(output: Path, jobs: list[ImageJob], done: set[str], guidance: float) -> None:
    lines = [json.dumps(job.manifest_entry(guidance), ensure_ascii=False) for job in jobs if job.file in done]
    write_text_atomic(output / MANIFEST_NAME, "".join(line + "\n" for line in lines))


def check_image_count(records: int, per_prompt: int) -> None:
    """Refuse a plan too big to hold (each image is a manifest line kept in memory)."""
    if records * per_prompt > MAX_IMAGES:
        raise InputError(
            f"{records} prompts × {per_prompt} images per prompt = {records * per_prompt:,} images, more than the "
            f"{MAX_IMAGES:,} one folder holds; lower --images-per-prompt or split the prompt list"
        )


def _check_grid(config: GenerateConfig, total: int) -> None:
    if not config.grid:
        return
    if total > MAX_GRID_IMAGES:
        raise InputError(f"--grid tiles at most {MAX_GRID_IMAGES} images, this list makes {total}; drop --grid")
    if config.grid_columns is not None and config.grid_columns > total:
        raise InputError(f"--grid-columns {config.grid_columns} is more than the {total} images; use 1 to {total}")


def generate(config: GenerateConfig, pipe=None, *, lock: bool = True, before_write=None) -> GenerationResult:
    """Draw every image of ``config.prompts`` that ``config.output`` does not hold yet.

    Nothing is written or deleted until every input is checked and the first batch is drawn in
    memory (so a bad model, an out-of-memory batch or a folder that is not ours changes nothing).
    ``lock=False`` when the caller holds a lock on a parent folder; ``before_write`` runs once,
    just before the first change (``erase eval`` records its report folder's names there).
    """
    # 1. Check inputs and plan the work.
    records = load_prompts(config.prompts, seed=config.seed)
    check_image_count(len(records), config.images_per_prompt)
    _check_grid(config, len(records) * config.images_per_prompt)
    output = Path(config.output)
    check_outside(output, {"--prompts": config.prompts, "--model": config.model, "--model-config": config.model_config})
    jobs = plan_jobs(records, config.images_per_prompt, config.seeding)
    with output_lock(output, enabled=lock and process_state().is_main_process):  # also refuses a file
        return _generate_into(output, jobs, config, pipe, before_write)


def _generate_into(output: Path, jobs: list[ImageJob], config: GenerateConfig, pipe, before_write) -> GenerationResult:
    state = process_state()
    world, rank, main = state.num_processes, state.process_index, state.is_main_process
    settings = asdict(config) | {"model_weights": weights_stamp(config.model)}
    folder = OwnedFolder.inspect(output, "images")
    existing = _reusable_manifest(output, settings, config.overwrite) if folder.marked else {}
    restart = existing is None
    names = [MANIFEST_NAME, SETTINGS_NAME, *(job.file for job in jobs)] + (["grid.png"] if config.grid else [])
    folder.check_claimable(names)

    # 2. Skip what is already there (our file, same prompt and seed in the manifest).
    existing = existing or {}
    done = {
        job.file
        for job in jobs
        if folder.owns(job.file)
        and (output / job.file).is_file()
        and existing.get(job.file, {}).get("prompt") == job.record.prompt
        and existing.get(job.file, {}).get("seed") == job.seed
        and _same_row_settings(existing[job.file], job, config.guidance_scale)
    }
    todo = [job for job in jobs if job.file not in done]
    if todo and pipe is None:
        device = str(state.device) if world > 1 and config.device == "auto" else config.device
        pipe = load_pipeline(
            config.model,
            dtype=config.dtype,
            device=device,
            config=config.model_config,
            allow_pickle=config.allow_pickle,
        )
    if pipe is not None:
        check_sampler_steps(pipe, config.steps)
        if main and (warning := truncation_warning(pipe.tokenizer, [j.record.prompt for j in todo])):
            print(warning, file=sys.stderr)
        if getattr(pipe, "safety_checker", None) is not None and not config.safety_checker:
            pipe.safety_checker = None  # it would black out flagged images: the model's output is what we measure
            if main:
                print(
                    f"note: {config.model} carries a safety checker; it is off for these images "
                    "(flagged images would come out black); --safety-checker keeps it",
                    file=sys.stderr,
                )

    def commit() -> None:
        """The first change: everything above has been checked and the first batch drawn."""
        if main:
            if before_write is not None:
                before_write()
            if restart:
                folder.remove()
            folder.claim(names)
            folder.remove_leftovers()  # temp files of a killed run
            write_json_atomic(output / SETTINGS_NAME, settings)
        if world > 1:
            state.wait_for_everyone()

    # 3. Generate in rounds (one batch per process), writing each image and the manifest as we go.
    start = time.perf_counter()
    bar = progress(len(todo), "generate", unit="img", enabled=bool(config.progress and main and todo))
    per_round = config.batch_size * world
    committed = False
    black: list[str] = []  # this process's images with no pixel above near-black
    for first in range(0, len(todo), per_round):
        chunk = todo[first : first + per_round]
        mine = chunk[rank::world]
        images = generate_batch(pipe, mine, config) if mine else []
        if not committed:
            commit()
            committed = True
        for job, image in zip(mine, images, strict=True):
            with atomic_path(output / job.file) as tmp:
                image.save(tmp, format="PNG")
        black += [job.file for job, image in zip(mine, images, strict=True) if _all_black(image)]
        finished = [job.file for job in mine]
        done.update(gather_object(finished) if world > 1 else finished)
        if main:
            _write_manifest(output, jobs, done, config.guidance_scale)
        bar.update(len(chunk))
    bar.close()
    if world > 1:
        black = [name for names in gather_object([black]) for name in names]
    if black and main:
        print(
            f"warning: {len(black)} of the {len(todo)} images drawn are entirely black (the first: {black[0]}); "
            "a safety checker, or a model that has collapsed? Scores computed on them mean little",
            file=sys.stderr,
        )
    if not committed:  # nothing to draw: the folder is already ours and complete
        commit()
        if main:
            _write_manifest(output, jobs, done, config.guidance_scale)
    state.wait_for_everyone()
    seconds = time.perf_counter() - start
    grid = None
    if config.grid and main:
        paths = [output / job.file for job in jobs]
        grid = save_grid(paths, output / "grid.png", columns=config.grid_columns, min_cell=64)
    return GenerationResult(output, len(jobs), len(todo), len(jobs) - len(todo), seconds if todo else 0.0, world, grid)


def _all_black(image) -> bool:
    """No channel of any pixel above 2/255: what a safety checker leaves of a flagged image."""
    return all(high <= 2 for _, high in image.convert("RGB").getextrema())


def _same_row_settings(entry: dict, job: ImageJob, default_guidance: float) -> bool:
    """An image drawn with other per-row settings (the list's guidance or size changed) is
    drawn again. Manifests from before per-row settings carry none: the run's values held."""
    if entry.get("guidance", default_guidance) != job.guidance(default_guidance):
        return False
    return all(entry.get(side) == getattr(job.record, side) for side in ("height", "width"))


def native_size(pipe) -> tuple[int, int]:
    """(height, width) the pipeline draws when given neither: the UNet's sample size in pixels."""
    size = pipe.unet.config.sample_size
    height, width = (size, size) if isinstance(size, int) else size
    return height * pipe.vae_scale_factor, width * pipe.vae_scale_factor


def _settings_of(job: ImageJob, config: GenerateConfig) -> tuple:
    return job.guidance(config.guidance_scale), job.record.height or config.height, job.record.width or config.width


@torch.no_grad()
def generate_batch(pipe, jobs: list[ImageJob], config: GenerateConfig) -> list:
    """The batch's images in order: one pipeline call per distinct (guidance, size) among its
    rows, usually one."""
    groups: dict[tuple, list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(_settings_of(job, config), []).append(i)
    images: list = [None] * len(jobs)
    for (guidance, height, width), members in groups.items():
        drawn = _pipeline_call(pipe, [jobs[i] for i in members], config, guidance, height, width)
        for i, image in zip(members, drawn, strict=True):
            images[i] = image
    return images


def _pipeline_call(pipe, jobs: list[ImageJob], config: GenerateConfig, guidance, height, width) -> list:
    """One pipeline call; each image starts from its own seeded CPU generator."""
    native_height, native_width = native_size(pipe)  # diffusers drops a lone height or width: give both
    height, width = height or native_height, width or native_width
    generators = [torch.Generator("cpu").manual_seed(job.record.seed + job.index) for job in jobs]
    latents = _esd_latents(pipe, jobs, height, width) if config.seeding == "esd" else None
    negative = [config.negative_prompt] * len(jobs) if config.negative_prompt else None
    out = pipe(
        prompt=[job.record.prompt for job in jobs],
        negative_prompt=negative,
        num_inference_steps=config.steps,
        guidance_scale=guidance,
        height=height,
        width=width,
        generator=generators,
        latents=latents,
        output_type="pil",
    )
    return out.images


def _esd_latents(pipe, jobs: list[ImageJob], height: int, width: int) -> torch.Tensor:
    """Each job's starting noise as ESD's generate-images.py draws it: one CPU generator seeded
    with the row's seed, one randn of (k, C, h, w) for the row's k images; this job takes its
    slice. The pipeline scales it by the scheduler's initial sigma, as ESD's script does. As in
    theirs, when C·h·w is not a multiple of 16 (both latent sides odd) an image's noise depends
    on the row's k: torch's CPU randn redraws the last 16 values of a tensor whose size is not a
    multiple of 16. At the usual sizes image i is the same for every k > i."""
    h, w = height // pipe.vae_scale_factor, width // pipe.vae_scale_factor
    rows: dict[tuple[int, int], torch.Tensor] = {}
    out = []
    for job in jobs:
        key = (job.record.seed, job.of)
        if key not in rows:
            generator = torch.Generator("cpu").manual_seed(job.record.seed)
            rows[key] = torch.randn((job.of, pipe.unet.config.in_channels, h, w), generator=generator)
        out.append(rows[key][job.index])
    return torch.stack(out).to(pipe.unet.device, pipe.unet.dtype)
