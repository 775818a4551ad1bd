"""The erasure loop on Hugging Face Accelerate: setup → train → save (torchtune-style recipe).

Per step (METHOD.md): draw forget and retain x_t from the x_t source (by default latents from
the bank, noised to a random t), compute the frozen model's targets without grad in one UNet call
(or read them from the draw, ``--x-source trajectory``), the trainable model's ℓ_u and ℓ_r (in
one call with ``--joint-forward``), let the balancer turn them into a gradient (optionally
masked), clip, step Adam, and let the balancer update λ. Runs on one CPU, one GPU, or several
GPUs under ``accelerate launch``.
"""

from __future__ import annotations

import contextlib
import json
import math
import shlex
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch
from accelerate.utils import gather_object

from erase import losses
from erase.adversarial import AdversarialPrompts
from erase.balancers import BalancerSettings, build_balancer
from erase.balancers.base import flat_grad, flat_params, set_flat_grad
from erase.checkpoint import CHECKPOINTS, latest_checkpoint, load_checkpoint, save_checkpoint
from erase.config import TrainConfig
from erase.frozen import FrozenRequest
from erase.half_frozen import HalfFrozen
from erase.lineage import Lineage, read_lineage
from erase.mask import FeasibleMask
from erase.params import PARAMETER_SETS, changed_tensors, tensors_fingerprint
from erase.retain_focus import RetainFocus
from erase.xt_sources import X_SOURCES, Draw
from pipelines.conditioning import Conditioning
from pipelines.families import family_of
from pipelines.files import atomic_path, comparable_setting, write_json_atomic, write_text_atomic
from pipelines.loading import check_sampler_steps, load_pipeline
from pipelines.lock import output_lock
from pipelines.ownership import OwnedFolder, check_outside, pipeline_entries
from pipelines.prediction import EpsilonSpace
from pipelines.processes import accelerator_for, is_main_process
from pipelines.progress import progress
from pipelines.prompt_fit import require_whole
from prompts import InputError, PromptRecord, load_prompts

CONFIG_NAME = "train_config.json"
LOG_NAME = "train_log.jsonl"
LOSS_UNITS = "epsilon"  # every loss is computed on predictions converted to ε (pipelines/prediction.py)
STAGING = ".pipeline"  # the finished pipeline is written here, then moved into the run folder
# Fields that may differ between a run and its --resume: they do not change what is computed.
# Settings added with a default other than what runs before them did: a run folder that does not
# record one was started with this value, and resuming it under the new default would mix two runs.
_BEFORE_RECORDED = {"retain_unconditional": 0.0, "retain_focus": 0.0, "lambda_smoothing": 0.0, "joint_forward": False}
_RESUME_MAY_CHANGE = {
    "output",
    "resume",
    "overwrite",
    "progress",
    "checkpoint_every",
    "allow_pickle",
    "gradient_checkpointing",  # memory levers: the same numbers, computed with less memory
    "offload_encoders",
}


def _as_flag(name: str, value) -> str:
    """How a setting is given on the command line, for messages: "without" the flag for its
    default or None, ``--no-…`` for a switch turned off whose default is not off."""
    flag = f"--{name.replace('_', '-')}"
    default = next((f.default for f in fields(TrainConfig) if f.name == name), None)
    if value is False and default is not False:
        return f"--no-{flag[2:]}"
    if value is None or value is False:
        return f"without {flag}"
    return flag if value is True else f"{flag} {shlex.quote(str(value))}"


class NonFiniteLossError(InputError):
    """A loss, a weight or λ became NaN or inf; the last good checkpoint is kept."""


def recorded_base(model: str) -> str:
    """The base model as a run records it: an absolute path for files and folders, so that
    ``erase eval RUN`` finds it from any working directory; `default` and hub ids as given."""
    path = Path(model).expanduser()
    return str(path.resolve()) if model != "default" and path.exists() else model


def resolve_prompts(config: TrainConfig, lineage: Lineage | None = None) -> tuple[list[str], list[str], list[str]]:
    """(forget prompts, their anchors, retain prompts). A forget CSV's ``anchor`` column overrides
    ``--anchor`` per prompt. For the default model the retain set defaults to every shipped digit
    prompt that is not being erased (earlier steps' concepts included: erase/lineage.py)."""
    if config.concept:
        records = [PromptRecord("0", config.concept.strip(), 0)]
    else:
        records = load_prompts(config.forget)
    anchors = {}  # first anchor given for each distinct forget prompt
    for record in records:
        anchor = config.anchor if record.anchor is None else record.anchor
        if _as_read(anchor) == _as_read(record.prompt):  # the target would be the model's own prediction
            source = "--anchor" if record.anchor is None else f"the anchor column of {config.forget}"
            raise InputError(
                f"{source} gives {record.prompt!r} itself as its anchor, so the loss would be zero and nothing "
                'erased; give another anchor (e.g. a broader concept), or none ("" = unconditional, ESD)'
            )
        anchors.setdefault(record.prompt, anchor)
    forget = list(anchors)
    if config.retain:
        retain = [r.prompt for r in load_prompts(config.retain)]
    elif (lineage or read_lineage(config.model)).root_is_default:  # the default model, or a run erased from it
        retain = [r.prompt for r in load_prompts("default/digits") if r.prompt not in forget]
    else:
        retain = []
    retain = [p for p in dict.fromkeys(retain) if p not in forget]
    needs_retain = config.method != "none" or config.mask == "feasible"
    if needs_retain and not retain:
        raise InputError(
            f"--method {config.method} needs retain prompts; give --retain (e.g. sd/retain-general) "
            "or use --method none"
        )
    return forget, [anchors[p] for p in forget], retain


def _as_read(prompt: str) -> str:
    """A prompt as CLIP's tokenizer reads it: case and runs of spaces make no difference."""
    return " ".join(prompt.lower().split())


class ErasureRun:
    """setup() once, then train(); ``trainable`` is the UNet being erased."""

    def __init__(self, config: TrainConfig, pipe=None, afresh: str | None = None):
        self.config = config
        self.pipe = pipe
        self.output = Path(config.output)
        self.folder = OwnedFolder(self.output, "run")
        self.restart = False  # --overwrite of an earlier run: its files go at the first write
        # how a refused resume is started afresh instead; `erase sweep`, which has no --overwrite, says its own
        self.afresh = afresh or "use --overwrite to start afresh"
        self.saved: dict = {}  # the config of the run being resumed
        self.checked = False

    # 1. Checks and setup: nothing here writes into the run folder --------------------------
    def check_inputs(self) -> None:
        """Prompt lists, lineage and the output folder; reads only."""
        cfg = self.config
        self.lineage = read_lineage(cfg.model)
        self.forget_prompts, self.anchor_prompts, self.retain_prompts = resolve_prompts(cfg, self.lineage)
        inputs = {"--model": cfg.model, "--model-config": cfg.model_config, "--forget": cfg.forget}
        check_outside(self.output, inputs | {"--retain": cfg.retain})
        self.folder = OwnedFolder.inspect(self.output, "run")
        has_run = any((self.output / name).exists() for name in self.folder.names)
        if has_run and cfg.resume:
            self.check_same_run()
        elif has_run and not cfg.overwrite:
            raise InputError(
                f"--output {self.output} already exists; use --resume to continue it, "
                "--overwrite to replace it, or another folder"
            )
        elif cfg.resume:
            raise InputError(f"--resume given but {self.output} holds no run to resume; drop --resume to start one")
        self.restart = has_run and not cfg.resume
        self.folder.check_claimable(self._names())
        self.checked = True

    def _names(self, pipe=None) -> list[str]:
        """Every top-level name a run writes (the pipeline's components once it is loaded)."""
        files = PARAMETER_SETS[self.config.parameters].files
        return [CONFIG_NAME, LOG_NAME, CHECKPOINTS, STAGING, *files, *(pipeline_entries(pipe) if pipe else [])]

    def setup(self) -> None:
        cfg = self.config
        if not self.checked:
            self.check_inputs()
        self.accelerator = accelerator_for(cfg.mixed_precision)
        device = self.accelerator.device
        # accelerate has no fp16 autocast on CPU and trains in fp32: say so rather than pretend, and
        # hold no weight in fp16 either (--half-frozen), which fp32 matrix products would refuse.
        self.fp32_anyway = cfg.mixed_precision == "fp16" and device.type == "cpu"
        if self.fp32_anyway and self.accelerator.is_main_process:
            also = ", nor --half-frozen" if cfg.half_frozen else ""
            print(
                f"note: --mixed-precision fp16 has no effect on CPU (the run is fp32){also}; bf16 does", file=sys.stderr
            )
        if self.pipe is None:
            self.pipe = load_pipeline(
                cfg.model, device=str(device), config=cfg.model_config, allow_pickle=cfg.allow_pickle
            )
        pipe = self.pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        self.folder.check_claimable(self._names(pipe))
        state = pipe.unet.state_dict()
        self.base_fingerprint = tensors_fingerprint(state, changed_tensors(state, asdict(cfg)))
        started_from = self.saved.get("base_fingerprint")
        if cfg.resume and started_from and started_from != self.base_fingerprint:
            # the same --model path can name other weights now (a file replaced, or a relative path
            # from another folder): the checkpoint's tensors would be mixed into another base. Checked
            # before the bank is drawn (minutes on SDXL).
            raise InputError(
                f"--resume: --model {cfg.model} is not the model {self.output} started from (the tensors it "
                f"trains have other values); give that model, or {self.afresh}"
            )
        check_sampler_steps(pipe, cfg.bank_steps, "--bank-steps")
        require_whole(pipe.tokenizer, self.forget_prompts, "forget prompt")
        require_whole(pipe.tokenizer, [a for a in self.anchor_prompts if a], "anchor prompt")
        show = cfg.progress and self.accelerator.is_local_main_process

        # Conditioning, once: what the UNet needs besides (x_t, t) for every forget and retain
        # prompt and each forget prompt's anchor ("" = the family's unconditional input).
        self.family = family_of(pipe)
        self.conditions = {"forget": self.family.encode(pipe, self.forget_prompts)}
        if self.retain_prompts:
            self.conditions["retain"] = self.family.encode(pipe, self.retain_prompts)
            self.unconditional = self.family.encode(pipe, [""])
        self.focus = RetainFocus(len(self.retain_prompts), cfg.retain_focus) if cfg.retain_focus else None
        self.anchors = self.family.encode(pipe, self.anchor_prompts)
        self.space = EpsilonSpace(pipe.scheduler)
        if cfg.resume and self.space.kind != LOSS_UNITS and self.saved.get("loss_units") != LOSS_UNITS:
            raise InputError(
                f"--resume: {self.output} was started by an older erase that computed this {self.space.kind} "
                f"model's losses in its own units, not ε; its λ and optimiser state do not carry over: {self.afresh}"
            )
        prompts = {"forget": self.forget_prompts, "retain": self.retain_prompts}
        with self.accelerator.autocast():  # the bank samples in the run's precision, as the steps compute
            self.x_source = X_SOURCES[cfg.x_source](pipe, self.family, prompts, self.conditions, cfg, show)
        self.adversarial = None
        if cfg.adversarial_every:
            # The prefixes start from a generator of their own, so setting them up leaves the data
            # generator as it was; each round's attack then draws its batches from the data generator
            # (checkpointed, so a resume is exact), and the batches after the first round differ
            # from a run without adversarial rounds.
            init = torch.Generator().manual_seed(cfg.seed + 104729)
            self.adversarial = AdversarialPrompts(pipe, self.family, self.forget_prompts, cfg.adversarial_tokens, init)
        if cfg.offload_encoders:  # from here on only the UNet runs (the conditioning is encoded)
            for name, part in pipe.components.items():
                if isinstance(part, torch.nn.Module) and name != "unet":
                    part.to("cpu")

        # Trainable tensors (the UNet's own, or LoRA adapters), and the frozen original's
        # predictions from the same UNet (erase/frozen.py: no second UNet).
        unet = pipe.unet
        if cfg.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        self.trainable = PARAMETER_SETS[cfg.parameters].attach(unet, asdict(cfg))
        named = self.trainable.named
        self.param_names = {n for n, _ in named}
        self.frozen = self.trainable.frozen
        holds_half = cfg.half_frozen and not self.fp32_anyway
        self.half_frozen = HalfFrozen(unet, self.frozen, cfg.mixed_precision) if holds_half else None
        optimizer = torch.optim.Adam([p for _, p in named], lr=cfg.learning_rate)
        self.unet, self.optimizer = self.accelerator.prepare(unet.train(), optimizer)
        self.params = [p for _, p in named]
        self.balancer = balancer_for(cfg)
        self.mask = FeasibleMask(cfg.mask_delta, cfg.mask_micro_batches) if cfg.mask == "feasible" else None
        self.generator = torch.Generator().manual_seed(cfg.seed + 7919 * self.accelerator.process_index)
        # --retain-probe next: the next step's retain batch, drawn and measured at this step's θ
        self.lookahead: dict | None = None
        self.start_step = 0
        if cfg.resume and (ckpt := latest_checkpoint(self.output)) is not None:
            self._restore(ckpt)

    def _commit(self) -> None:
        """The run's first write, after every check and the first step in memory: replace an
        earlier run (--overwrite: only the files erase recorded), record the names this run
        writes, clear a killed run's temp files (--resume), save the resolved config."""
        cfg = self.config
        model_config = recorded_base(cfg.model_config) if cfg.model_config else None
        if self.accelerator.is_main_process:
            if self.restart:
                self.folder.remove()
            self.folder.claim(self._names(self.pipe))
            self.folder.remove_leftovers()
            write_json_atomic(
                self.output / CONFIG_NAME,
                asdict(cfg)
                | {
                    "forget_prompts": self.forget_prompts,
                    "anchor_prompts": self.anchor_prompts,
                    "retain_prompts": self.retain_prompts,
                    "base_model": recorded_base(cfg.model),
                    "base_model_config": model_config,
                    "root_base_model": recorded_base(self.lineage.root),
                    "root_base_model_config": self.lineage.root_config if self.lineage.steps else model_config,
                    "lineage": self.lineage.steps,
                    "base_fingerprint": self.base_fingerprint,
                    "loss_units": LOSS_UNITS,
                    **({"calibrated": self.saved["calibrated"]} if "calibrated" in self.saved else {}),
                },
            )
            log_path = self.output / LOG_NAME
            if self.start_step == 0:
                log_path.unlink(missing_ok=True)
            elif log_path.exists():
                lines = _log_lines_upto(log_path, self.start_step)
                write_text_atomic(log_path, "".join(line + "\n" for line in lines))
        self.accelerator.wait_for_everyone()

    def check_same_run(self) -> None:
        """--resume with other settings would silently mix two runs; refuse, naming the field."""
        saved_file = self.output / CONFIG_NAME
        if not saved_file.is_file():
            raise InputError(
                f"--resume given but {self.output} has no {CONFIG_NAME}; it is not a run folder "
                f"(or was killed before its first step): {self.afresh}"
            )
        try:
            saved = json.loads(saved_file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise InputError(f"{saved_file} is damaged; {self.afresh}") from None
        self.saved = saved
        may_change = set(_RESUME_MAY_CHANGE)
        if self.config.retain_probe == "next":  # its look-ahead stops before each checkpoint (_looks_ahead)
            may_change.discard("checkpoint_every")
        differ = []  # (name, started with, given now)
        for name, value in asdict(self.config).items():
            if name in may_change or (name not in saved and name not in _BEFORE_RECORDED):
                continue
            started = saved.get(name, _BEFORE_RECORDED.get(name))
            if comparable_setting(json.loads(json.dumps(value))) != comparable_setting(started):
                differ.append((name, started, value))
        if differ:
            was = ", ".join(f"{name}={started!r}, not {value!r}" for name, started, value in differ)
            flags = " ".join(_as_flag(name, started) for name, started, _ in differ)
            raise InputError(
                f"--resume: {self.output} was started with {was}; resume with the same settings "
                f"({flags}), or {self.afresh}"
            )

    def is_complete(self) -> bool:
        """A finished run: the pipeline is saved (model_index.json last) and no checkpoint is left."""
        return (self.output / "model_index.json").is_file() and latest_checkpoint(self.output) is None

    def _restore(self, path: Path) -> None:
        step, trainable, opt_state, balancer_state, rng, scaler_state, extra = load_checkpoint(path)
        unet = self.accelerator.unwrap_model(self.unet)
        missing = self.param_names - set(trainable)
        if missing:
            raise InputError(
                f"checkpoint {path} does not match this run's parameter set (missing {sorted(missing)[0]})"
            )
        with torch.no_grad():
            for name, param in unet.named_parameters():
                if name in trainable:
                    param.copy_(trainable[name].to(param.device, param.dtype))
        self.optimizer.load_state_dict(opt_state)
        self.balancer.load_state_dict(balancer_state)
        if len(rng) != self.accelerator.num_processes:
            raise InputError(
                f"checkpoint {path} was written by {len(rng)} process(es), and this run has "
                f"{self.accelerator.num_processes}; resume with {len(rng)} (each process's batches are in the "
                f"checkpoint), or {self.afresh}"
            )
        self.generator.set_state(rng[self.accelerator.process_index])
        if self.accelerator.scaler is not None and scaler_state is not None:
            self.accelerator.scaler.load_state_dict(scaler_state)
        if self.adversarial is not None:
            self.adversarial.load_state(extra, started=step > self.config.adversarial_every)
        if self.focus is not None:
            self.focus.load_state(extra)
        self.start_step = step

    # 2. One step ----------------------------------------------------------------------------
    def _draw(self, kind: str, batch: int) -> Draw:
        return self.x_source.draw(kind, batch, self.generator, self._denoise_current)

    def _draw_retain(self) -> Draw:
        """A retain batch, its prompts drawn by ``--retain-focus``'s weights (uniformly without),
        whose first ``--retain-unconditional`` share of rows carry ∅ in place of their prompt (the
        rows are drawn at random, so the first ones are as good as any): the retain loss then also
        holds the ∅ prediction that guidance mixes into every image, on the latents of the
        concepts to keep (erasing "plain" moved it and took "red" along)."""
        weights = self.focus.weights() if self.focus is not None else None
        draw = self.x_source.draw("retain", self.config.batch_size, self.generator, self._denoise_current, weights)
        count = self._unconditional_rows()
        if not count:
            return draw
        cond = Conditioning.cat([self.unconditional.expand(count), draw.cond[count:]])
        frozen = draw.frozen
        if frozen is not None:  # the recorded ∅ prediction for the ∅ rows
            frozen = torch.cat([draw.frozen_null[:count], frozen[count:]])
        return replace(draw, cond=cond, frozen=frozen)

    def _unconditional_rows(self) -> int:
        """How many leading rows of a retain batch carry ∅ (``--retain-unconditional``)."""
        return round(self.config.retain_unconditional * self.config.batch_size)

    def _denoise_current(self, x_t, t, cond):
        """The trainable UNet's raw output, no grad (the sample-to-t source samples with it)."""
        with torch.no_grad(), self.accelerator.autocast():
            return self.accelerator.unwrap_model(self.unet)(x_t, t, **cond.unet_kwargs()).sample

    def _epsilon(self, model, draw: Draw, cond=None) -> torch.Tensor:
        """``model``'s prediction on ``draw`` in ε units (float32), under the draw's conditioning or
        ``cond``: every loss is computed there, so ε- and v-prediction models share loss units."""
        return self._epsilons(model, [(draw, draw.cond if cond is None else cond)])[0]

    def _epsilons(self, model, parts: list[tuple[Draw, Conditioning]]) -> list[torch.Tensor]:
        """``model``'s predictions on several draws, each under its conditioning, from *one* call
        (their conditionings must be ``joinable``); each row is computed on its own."""
        if len(parts) == 1:
            ((draw, cond),) = parts
            x_t, t = draw.x_t, draw.t
        else:
            x_t, t = torch.cat([d.x_t for d, _ in parts]), torch.cat([d.t for d, _ in parts])
            cond = Conditioning.cat([c for _, c in parts])
        with self.accelerator.autocast():
            output = model(x_t, t, **cond.unet_kwargs()).sample
        pieces = output.split([len(d.x_t) for d, _ in parts])
        return [self._in_epsilon(piece, draw) for piece, (draw, _) in zip(pieces, parts, strict=True)]

    def _in_epsilon(self, output: torch.Tensor, draw: Draw) -> torch.Tensor:
        """A raw UNet output at the draw's (x_t, t), run now or recorded by the source, in ε units."""
        return self.space(output.float(), draw.x_t.float(), draw.t)

    def _frozen_epsilon(self, draw: Draw, cond=None) -> torch.Tensor:
        """The frozen model's prediction on ``draw`` under its own conditioning or ``cond``: the
        one the source recorded with the draw when it has it (``--x-source trajectory``)."""
        return self._frozen_epsilons([FrozenRequest(draw, cond, draw.frozen if cond is None else None)])[0]

    def _anchor_request(self, draw: Draw) -> FrozenRequest:
        """The frozen model's prediction under each row's anchor prompt: the recorded ∅ one when
        every anchor is ∅ and the source has it."""
        if draw.frozen_null is not None and not any(self.anchor_prompts):
            return FrozenRequest(draw, None, draw.frozen_null)
        return FrozenRequest(draw, self.anchors[draw.rows])

    def _frozen_epsilons(self, requests: list[FrozenRequest]) -> list[torch.Tensor]:
        """The frozen predictions a step needs (forget under its anchor and its prompt, retain under
        its prompt), read where recorded and the rest run as *one* UNet call: three calls of B
        latents each cost launch overhead three times, which is most of a GPU step at small batch,
        and on the default model on a CPU one call of 3B took 0.47× the time of three. Every row is
        computed on its own (GroupNorm and attention are per sample), so the results are the
        separate calls' (bit for bit on a CPU: tests/test_frozen.py). Requests whose conditioning
        cannot be joined (other text lengths or added inputs) go in calls of their own."""
        out: list[torch.Tensor | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for index, request in enumerate(requests):
            if request.recorded is not None:
                out[index] = self._in_epsilon(request.recorded, request.draw)
            else:
                groups.setdefault(request.conditioning().joinable(), []).append(index)
        for members in groups.values():
            parts = [(requests[i].draw, requests[i].conditioning()) for i in members]
            with torch.no_grad():
                values = self._epsilons(self.frozen, parts)
            for index, value in zip(members, values, strict=True):
                out[index] = value
        return out

    def _frozen_targets(self, batch: dict) -> None:
        """Adds the step's frozen predictions to ``batch`` (``anchor`` and ``concept`` on the forget
        draw, ``retain_target`` where the retain batch has none yet), in one call."""
        draw, names, requests = batch["forget"], ["anchor"], [self._anchor_request(batch["forget"])]
        if self.config.loss == "negative-guidance":
            names.append("concept")
            requests.append(FrozenRequest(draw, None, draw.frozen))
        if "retain" in batch and "retain_target" not in batch:
            names.append("retain_target")
            requests.append(FrozenRequest(batch["retain"], None, batch["retain"].frozen))
        batch.update(zip(names, self._frozen_epsilons(requests), strict=True))

    def _retain_loss(self, batch, part: torch.Tensor | None = None, eps: torch.Tensor | None = None) -> torch.Tensor:
        """ℓ_r of the trainable UNet on the batch's retain latents (or the rows in ``part``);
        ``eps``: its prediction there when already run (``--joint-forward``)."""
        draw, target = batch["retain"], batch["retain_target"]
        if part is not None:
            draw, target = draw[part], target[part]
        eps = self._epsilon(self.unet, draw) if eps is None else eps
        if part is None and self.focus is not None:  # each row's own loss (the batch's mean is ℓ_r)
            batch["retain_row_losses"] = (eps.detach() - target).pow(2).flatten(1).mean(1)
        return losses.retain_loss(eps, target)

    def _step_losses(self, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        cfg = self.config
        draw = batch["forget"]
        attacked = self.adversarial.condition(draw) if self.adversarial else None  # None before a round
        parts = [(draw, draw.cond if attacked is None else attacked)]
        if "retain" in batch and self._joins_halves(parts[0][1], batch["retain"].cond):
            parts.append((batch["retain"], batch["retain"].cond))
        eps_forget, *eps_retain = self._epsilons(self.unet, parts)
        if cfg.loss == "negative-guidance":
            loss_u = losses.negative_guidance_loss(eps_forget, batch["anchor"], batch["concept"], cfg.eta)
        else:
            loss_u = losses.anchor_loss(eps_forget, batch["anchor"])
        if "retain" not in batch:
            return loss_u, None
        if not self.balancer.needs_retain:  # `none` only logs ℓ_r: no graph held through its backward
            with torch.no_grad():
                return loss_u, self._retain_loss(batch)
        return loss_u, self._retain_loss(batch, eps=eps_retain[0] if eps_retain else None)

    def _joins_halves(self, forget: Conditioning, retain: Conditioning) -> bool:
        """``--joint-forward``: the forget and retain halves through the trained UNet as one call of
        2B latents, when this step's gradient is one backward of ℓ_u + λ·ℓ_r (two backward passes
        would each go through all 2B rows) and the conditionings can be joined."""
        return (
            self.config.joint_forward is not False  # None (the default): wherever the step allows
            and self.balancer.one_backward_of_both()
            and forget.joinable() == retain.joinable()
        )

    def _retain_value_now(self, batch) -> float:
        """ℓ_r on the same batch, noise and timesteps at the current weights (no grad)."""
        with torch.no_grad():
            value = self._retain_loss(batch)
        return self.accelerator.reduce(value.detach(), "mean").item()

    def _loss_scale(self) -> float:
        """fp16's current loss scale S (a power of two), 1 without a loss scaler."""
        scaler = self.accelerator.scaler
        return float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0

    def _backward(self, loss: torch.Tensor, **kwargs) -> None:
        """Backward, leaving *unscaled* gradients: under fp16 the loss scaler multiplies them by
        S, and balancers and the mask compare them with ε or with each other, so they are divided
        by S here (exact: S is a power of two) and multiplied back just before the optimiser step
        (``train_step``), where the scaler unscales them and checks for overflow itself.

        Then the trainable gradients are averaged over processes by us: DDP's hooks expect one
        backward per forward, but balancers and the mask take several per step (a two-process test
        caught `explicit` drifting apart under DDP's own reduction)."""
        acc = self.accelerator
        if acc.num_processes == 1:
            acc.backward(loss, **kwargs)
        else:
            with acc.no_sync(self.unet):
                acc.backward(loss, **kwargs)
            set_flat_grad(self.params, acc.reduce(flat_grad(self.params), "mean"))
        self._scale_gradients(1.0 / self._loss_scale())

    def _scale_gradients(self, factor: float) -> None:
        if factor != 1.0:
            for p in self.params:
                if p.grad is not None:
                    p.grad.mul_(factor)

    def _retain_gradient_samples(self, batch) -> torch.Tensor:
        """(m, n) retain gradients over m micro-batches, for the feasible mask. The mask's t test
        needs m draws from one distribution, but a retain batch is not exchangeable: its first
        rows carry ∅ (``--retain-unconditional``). Row i goes to micro-batch i mod m, so each
        holds the same share of ∅ rows; contiguous chunks made some all-∅ and the others all
        prompted, and the test then measured that difference instead of the noise."""
        samples = []
        draw = batch["retain"]
        rows, m = torch.arange(len(draw.rows), device=draw.x_t.device), self.mask.micro_batches
        for part in (rows[i::m] for i in range(m)):
            self.optimizer.zero_grad(set_to_none=True)
            self._backward(self._retain_loss(batch, part))
            samples.append(flat_grad(self.params))
        self.optimizer.zero_grad(set_to_none=True)
        return torch.stack(samples)

    def _adversarial_round(self) -> dict:
        """AdvUnlearn's inner attack against the model as it is now (erase/adversarial.py)."""
        cfg, unet = self.config, self.accelerator.unwrap_model(self.unet)
        return self.adversarial.attack(
            cfg.adversarial_iterations,
            cfg.adversarial_lr,
            draw=lambda: self._draw("forget", cfg.batch_size),
            target=self._frozen_epsilon,
            predict=lambda draw, cond: self._epsilon(unet, draw, cond),
            average=lambda value: self.accelerator.reduce(value, "mean"),
        )

    def train_step(self) -> dict:
        cfg = self.config
        log = {}
        if self.adversarial is not None and self.step > 0 and self.step % cfg.adversarial_every == 0:
            log |= self._adversarial_round()
        batch = {"forget": self._draw("forget", cfg.batch_size)}
        ahead, self.lookahead = self.lookahead, None
        if ahead is not None:  # drawn and measured by the previous step
            batch["retain"], batch["retain_target"] = ahead["retain"], ahead["retain_target"]
        elif "retain" in self.conditions:
            batch["retain"] = self._draw_retain()
        self._frozen_targets(batch)
        samples = self._retain_gradient_samples(batch) if self.mask is not None else None

        self.optimizer.zero_grad(set_to_none=True)
        loss_u, loss_r = self._step_losses(batch)
        value_u = self.accelerator.reduce(loss_u.detach(), "mean").item()
        value_r = self.accelerator.reduce(loss_r.detach(), "mean").item() if loss_r is not None else None
        if not math.isfinite(value_u) or (value_r is not None and not math.isfinite(value_r)):
            raise NonFiniteLossError(
                f"loss became {value_u if not math.isfinite(value_u) else value_r} at step {self.step + 1}; "
                "lower --learning-rate or use --mixed-precision no (the last good checkpoint is kept)"
            )
        log |= {"loss_forget": value_u, "loss_retain": value_r}
        if self.focus is not None:  # the rows under their own prompt, as they were before the step
            prompted = slice(self._unconditional_rows(), None)
            self.focus.observe(
                batch["retain"].rows[prompted],
                batch["retain_row_losses"][prompted],
                lambda v: self.accelerator.reduce(v.to(self.accelerator.device), "sum"),
            )
        probe, probe_before = batch, value_r
        if ahead is not None and ahead["before"] is not None:  # the previous step's Δℓ_r, on this batch
            log |= self.balancer.after_step(ahead["before"], lambda: value_r)
        if value_r is not None and self.balancer.probe == "fresh":  # a retain batch this step does not train on
            probe = self._probe_batch()
            probe_before = probe["before"]
        if value_r is not None and self.balancer.probe == "next" and self._looks_ahead():
            self.lookahead = self._probe_batch()
        log |= self.balancer.backward(loss_u, loss_r, self.params, self._backward, value_r)
        keep = None
        if samples is not None:
            masked, keep = self.mask.apply(flat_grad(self.params), samples)
            if self._loss_scale() != 1.0 and not torch.isfinite(samples).all():
                # A micro-batch's backward overflowed in fp16. The scaler checks only the gradient
                # it steps on, so it would neither skip nor lower S, and the test would quietly
                # reject those coordinates every step: hand it the overflow instead.
                masked[0] = float("inf")
            set_flat_grad(self.params, masked)
            log["mask_kept"] = keep.float().mean().item()
        self._scale_gradients(self._loss_scale())  # back to the scaler's units for its step
        if cfg.max_grad_norm > 0:
            self.accelerator.clip_grad_norm_(self.params, cfg.max_grad_norm)
        before = flat_params(self.params) if keep is not None or self.balancer.constrains_update else None
        self.optimizer.step()
        if self.accelerator.optimizer_step_was_skipped:  # fp16 overflow: θ did not move, so λ must not
            self.balancer.skip_step()
            if self.lookahead is not None:
                self.lookahead["before"] = None
            return log | {"skipped": 1.0, "loss_scale": self._loss_scale()}
        if keep is not None:  # the mask's promise is about θ: Adam's momentum would move rejected ones
            keep = self.mask.hold(self.params, before, keep, samples)
            log["mask_moved"] = keep.float().mean().item()
        if self.balancer.constrains_update:
            log |= self.balancer.constrain_update(self.params, before, keep)
        if value_r is not None and self.balancer.probe != "next":
            log |= self.balancer.after_step(probe_before, lambda: self._retain_value_now(probe))
        self._check_finite_state()
        if "retain_increase" in log and cfg.retain_budget > 0:
            log["budget_used"] = log["retain_increase"] / cfg.retain_budget
        return log

    @contextlib.contextmanager
    def _step_randomness(self):
        """torch's global RNG, seeded from (seed, process, step) for one step and put back after.
        Batches, noise and timesteps come from ``self.generator``, which checkpoints carry; what
        draws from the global RNG (peft's LoRA dropout, ``--lora-dropout``) would otherwise go on
        from wherever setup left it, and a resumed run would not end where an uninterrupted one
        does. The caller's own RNG state is left as it was."""
        device = self.accelerator.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            mixed = self.config.seed * 1_000_003 + 7919 * self.accelerator.process_index + self.step
            torch.manual_seed(mixed % 2**64)  # any --seed up to 2**63 - 1
            yield

    def _probe_batch(self) -> dict:
        """A retain batch, its frozen targets and ℓ_r on it now (``before``): drawn for the
        ``fresh`` probe, or as the next step's batch for ``next``."""
        probe = {"retain": self._draw_retain()}
        probe["retain_target"] = self._frozen_epsilon(probe["retain"])
        return probe | {"before": self._retain_value_now(probe)}

    def _looks_ahead(self) -> bool:
        """``next`` draws the next step's retain batch now, except at the last step and before a
        checkpoint: the batch is not saved in it, so a resumed run draws that step's batch
        afresh, as an uninterrupted one does, and λ takes no update across a checkpoint."""
        following = self.step + 1  # so --checkpoint-every is compared on --resume (check_same_run)
        return following < self.config.steps and following % self.config.checkpoint_every != 0

    def _check_finite_state(self) -> None:
        """Stop, like a non-finite loss does, when a step left NaN/inf weights or λ (a huge
        --lambda-lr or --lambda-max can do it with finite losses); nothing of it is saved."""
        peak = torch.stack([p.detach().abs().amax().float() for p in self.params]).amax()  # NaN propagates
        lam = float(self.balancer.state_dict().get("lambda", 0.0))
        if not (math.isfinite(peak.item()) and math.isfinite(lam)):
            what = "λ" if math.isfinite(peak.item()) else "the trained weights"
            raise NonFiniteLossError(
                f"{what} became NaN or inf at step {self.step + 1}; lower --learning-rate, --lambda-lr or "
                "--lambda-max (the last good checkpoint is kept)"
            )

    # 3. Loop and save ---------------------------------------------------------------------
    def train(self) -> Path:
        cfg = self.config
        acc = self.accelerator
        self._note_rounded_share()
        log_path = self.output / LOG_NAME
        committed = False
        bar = progress(
            cfg.steps,
            f"erase ({cfg.method})",
            unit="step",
            enabled=cfg.progress and acc.is_local_main_process,
            initial=self.start_step,
        )
        start = time.perf_counter()
        for step in range(self.start_step, cfg.steps):
            self.step = step
            with self._step_randomness():
                log = self.train_step()
            if not committed:  # the first step ran in memory: every check has passed
                self._commit()
                committed = True
            log = {"step": self.step + 1, **log, "seconds": round(time.perf_counter() - start, 3)}
            if acc.is_main_process:
                with open(log_path, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(log) + "\n")
                self._record_calibration(log)
            if (self.step + 1) % cfg.checkpoint_every == 0 and self.step + 1 < cfg.steps:
                self._checkpoint(self.step + 1)
            bar.update(1)
            bar.set_postfix(l_u=f"{log['loss_forget']:.4f}", lam=f"{log.get('lambda', 0):.3g}")
        bar.close()
        if not committed:
            self._commit()
        acc.wait_for_everyone()
        if acc.num_processes > 1:
            self._check_processes_agree()
        if acc.is_main_process:
            self._save_pipeline()
        acc.wait_for_everyone()  # every process returns a complete run folder
        return self.output

    def _note_rounded_share(self) -> None:
        """Once every check has passed: a --retain-unconditional share that is not whole rows of the
        batch (0.5 of a batch of 1 is no ∅ row at all) is rounded, and the user should know to what."""
        cfg = self.config
        share = cfg.retain_unconditional * cfg.batch_size
        if self.retain_prompts and share != round(share) and self.accelerator.is_main_process:
            rows = self._unconditional_rows()
            print(
                f"note: --retain-unconditional {cfg.retain_unconditional:g} of --batch-size {cfg.batch_size} is "
                f"{share:g} rows; each retain batch takes {rows} with ∅ (a share of {rows / cfg.batch_size:g})",
                file=sys.stderr,
            )

    def _record_calibration(self, log: dict) -> None:
        """λ's calibrated rate and start go into the run's config as well as its log: they are
        settings the run chose, and what a user copies into --lambda-lr to repeat them."""
        calibrated = {k.removeprefix("calibrated_"): v for k, v in log.items() if k.startswith("calibrated_")}
        if calibrated:
            path = self.output / CONFIG_NAME
            saved = json.loads(path.read_text(encoding="utf-8"))
            write_json_atomic(path, saved | {"calibrated": calibrated | {"at_step": log["step"]}})

    def _check_processes_agree(self) -> None:
        """Under data parallelism every process must end with the same weights and λ; a
        mismatch means the processes diverged (e.g. a balancer used unsynchronised values)."""
        weights = torch.stack([p.detach().double().sum() for p in self.params]).sum()
        lam = float(self.balancer.state_dict().get("lambda", 0.0))
        mine = torch.tensor([[weights.item(), lam]], dtype=torch.float64, device=self.accelerator.device)
        every = self.accelerator.gather(mine)
        if not torch.equal(every, mine.expand_as(every)):
            raise RuntimeError(f"processes ended with different weights or λ: {every.tolist()}")

    def _checkpoint(self, step: int) -> None:
        """Every process takes part (each hands over its generator's state); the main one writes."""
        rng_states = gather_object([self.generator.get_state()])
        if not self.accelerator.is_main_process:
            return
        unet = self.accelerator.unwrap_model(self.unet)
        trainable = {n: p for n, p in unet.named_parameters() if n in self.param_names}
        scaler = self.accelerator.scaler.state_dict() if self.accelerator.scaler is not None else None
        extra = {}
        for part in (self.adversarial, self.focus):
            extra |= part.state() if part is not None else {}
        save_checkpoint(
            self.output, step, trainable, self.optimizer, self.balancer.state_dict(), rng_states, scaler, extra or None
        )

    def _save_pipeline(self) -> None:
        """Write the erased pipeline into the run folder; model_index.json last, so only a complete
        folder is loadable."""
        pipe = self.pipe
        pipe.unet = self.accelerator.unwrap_model(self.unet).eval()
        if self.config.gradient_checkpointing:
            pipe.unet.disable_gradient_checkpointing()  # a training setting, not part of the model
        if self.half_frozen is not None:  # fp32 values back before LoRA merges or anything is written
            self.optimizer.state.clear()  # room on the accelerator for the fp32 tensors
            self.half_frozen.restore(pipe.unet)
        for name, write in self.trainable.finish().items():  # LoRA: its adapters, then merged into the UNet
            with atomic_path(self.output / name) as tmp:
                write(tmp)
        self.folder.replace_from(lambda tmp: pipe.save_pretrained(tmp, safe_serialization=True), staging=STAGING)
        self.folder.remove([CHECKPOINTS])


def _log_lines_upto(path: Path, step: int) -> list[str]:
    """The log's lines up to ``step`` (the checkpoint resumed from). A line cut short by a kill
    mid-append is dropped: it lies past the checkpoint anyway."""
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("step", step + 1) <= step:
            kept.append(line)
    return kept


def balancer_for(cfg: TrainConfig):
    """The balancer ``cfg.method`` names, with the run's settings (scripts/bench_scale.py builds
    one per method to time them on one run)."""
    return build_balancer(
        cfg.method,
        BalancerSettings(
            retain_weight=cfg.retain_weight,
            retain_budget=cfg.retain_budget,
            lambda_lr=cfg.lambda_lr,
            lambda_max=cfg.lambda_max,
            lambda_init=cfg.lambda_init,
            lambda_gain=cfg.lambda_gain,
            lambda_warmup=cfg.lambda_warmup,
            learning_rate=cfg.learning_rate,
            retain_probe=cfg.retain_probe,
            lambda_smoothing=cfg.lambda_smoothing,
        ),
    )


def train(config: TrainConfig, pipe=None, afresh: str | None = None) -> Path:
    """Run an erasure end to end; returns the run folder. The folder is locked while it runs;
    --resume on a finished run returns at once. ``afresh``: how a refused resume starts afresh
    instead, where that is not --overwrite."""
    with output_lock(config.output, enabled=is_main_process()):
        run = ErasureRun(config, pipe, afresh)
        run.check_inputs()
        if config.resume and run.is_complete():
            if is_main_process():
                run.folder.remove_leftovers()  # a kill while the last checkpoint was being deleted
            return run.output
        run.setup()
        return run.train()
