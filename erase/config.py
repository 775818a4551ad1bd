"""``TrainConfig``: everything ``erase train`` does, typed; the CLI flags are its fields."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from erase.balancers import BALANCERS
from erase.lora import DEFAULT_TARGETS
from erase.params import PARAMETER_SETS
from pipelines.loading import MODEL_CONFIG_HELP
from prompts import InputError
from prompts.checks import check_seed, check_types, flag

Method = Literal["eupmu", "eupmu-fast", "explicit", "weighted", "none"]
ParameterSet = Literal["xattn", "noxattn", "full", "lora"]
UnlearnLoss = Literal["negative-guidance", "anchor"]
MAX_BATCH = 65_536  # latents per step; far beyond any GPU, and refused before a huge allocation
assert set(Method.__args__) == set(BALANCERS) and set(ParameterSet.__args__) == set(PARAMETER_SETS)


@dataclass
class TrainConfig:
    output: str = field(metadata={"help": "run folder to create (a diffusers pipeline folder + config + log)"})
    concept: str | None = field(default=None, metadata={"help": "the prompt to erase (or give --forget)"})
    forget: str | None = field(default=None, metadata={"help": "prompt list whose prompts are all erased"})
    retain: str | None = field(
        default=None,
        metadata={"help": "prompt list to preserve (default model: the digit prompts not being erased)"},
    )
    model: str = field(
        default="default",
        metadata={
            "help": "base model: `default`, a folder, a file, a cached id, or a run folder (erases one concept "
            "after another; the run records every earlier step, and eval measures them all)"
        },
    )
    model_config: str | None = field(
        default=None,
        metadata={"help": MODEL_CONFIG_HELP},
    )
    allow_pickle: bool = field(
        default=False, metadata={"help": "allow a .ckpt/.pt/.bin base model (read with weights_only=True)"}
    )
    method: Method = field(
        default="eupmu-fast",
        metadata={
            "help": "how ℓ_u and ℓ_r are balanced: eupmu-fast (one backward of ℓ_u + λ·ℓ_r, λ moved by the change of "
            "ℓ_r from batch to batch, smoothed: it tracks ℓ_r's level, and costs no extra forward), eupmu (λ from ℓ_r "
            "re-measured on the same batch after the step: the paper's rule, one extra forward; on the default model "
            "its λ is bang-bang), explicit (two backwards, closed-form λ*; the update "
            "Adam applies is then projected so ℓ_r rises at most --retain-budget per step, to first order), "
            "weighted (ℓ_u + w·ℓ_r), none (ESD: ℓ_u alone)"
        },
    )
    parameters: ParameterSet = field(
        default="xattn",
        metadata={
            "help": "what is trained: the UNet's cross-attention (xattn), all but it (noxattn), everything (full), or "
            "LoRA adapters (lora: needs peft; merged into the saved UNet and kept as lora.safetensors for export)"
        },
    )
    lora_rank: int = field(default=4, metadata={"help": "LoRA rank r (--parameters lora)"})
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA α; the adapter's scale is α/r (default r)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    lora_targets: str = field(
        default=DEFAULT_TARGETS,
        metadata={"help": "comma-separated module-name suffixes LoRA adapts (default: cross-attention projections)"},
    )
    loss: UnlearnLoss = field(default="negative-guidance", metadata={"help": "the unlearning loss ℓ_u"})
    anchor: str = field(
        default="",
        metadata={
            "help": "anchor prompt a: negative guidance pushes away from c − a, --loss anchor maps c onto a "
            '("" = unconditional, ESD); a forget CSV\'s anchor column sets it per prompt'
        },
    )
    eta: float = field(default=1.0, metadata={"help": "negative-guidance strength η"})
    steps: int = field(default=200, metadata={"help": "optimisation steps"})
    learning_rate: float = field(default=1e-3, metadata={"help": "Adam learning rate α"})
    batch_size: int = field(default=16, metadata={"help": "forget (and retain) latents per step"})
    retain_budget: float = field(
        default=0.0,
        metadata={"help": "ε_abs: allowed rise of ℓ_r per step, in loss units (eupmu*, explicit); 0 = never rise"},
    )
    lambda_lr: float | None = field(
        default=None,
        metadata={
            "help": "β_abs: λ's change per unit of ℓ_r overrun, in loss units (default per method: 3e6 for eupmu, "
            "whose same-batch Δℓ_r is ~1e-6 a step on the default model; 3e4 for eupmu-fast, whose λ sums to β × "
            "the level of ℓ_r, ~1e-4–1e-3 there)"
        },
    )
    lambda_gain: float | None = field(
        default=None,
        metadata={
            "help": "opt-in: calibrate β_abs = G / σ(Δℓ_r) from the run's own noise over --lambda-warmup steps "
            "instead of --lambda-lr (it tracks, but kept less than the default on the default model: README)"
        },
    )
    lambda_warmup: int = field(
        default=10,
        metadata={
            "help": "with --lambda-gain: warm-up steps in which λ takes the explicit closed form λ* (two backwards); "
            "λ then starts from their median"
        },
    )
    retain_probe: Literal["same", "fresh", "next"] = field(
        default="same",
        metadata={
            "help": "eupmu: the batch Δℓ_r is measured on, before and after the step: `same` = the step's own retain "
            "batch (the paper; one extra forward), `fresh` = a retain batch the step did not train on (two extra "
            "forwards; not biased low by the step fitting its own batch), `next` = the next step's retain batch, "
            "measured before this step and by the next step's own retain loss (unbiased like fresh, one extra "
            "forward like same; λ's update waits a step, and none is made across a checkpoint)"
        },
    )
    lambda_init: float = field(default=0.0, metadata={"help": "λ's start (without --lambda-gain)"})
    lambda_smoothing: float | None = field(
        default=None,
        metadata={
            "help": "eupmu-fast: decay d of the running average of ℓ_r whose change from step to step drives λ "
            "(default 0.9: one batch's noise moves λ (1 − d) as much, and on the default model λ moves ~2%% of "
            "its mean a step instead of ~25%%; 0 = the raw next-batch ℓ_r, the paper's)"
        },
    )
    lambda_max: float = field(default=100.0, metadata={"help": "D: λ is clipped to [0, D]"})
    retain_weight: float = field(default=1.0, metadata={"help": "w for --method weighted"})
    retain_focus: float = field(
        default=0.5,
        metadata={
            "help": "share of each retain batch drawn in proportion to the square of how far each retain prompt's "
            "prediction has drifted from the original (a running average of its own retain loss), the rest "
            "uniformly: the concepts the erasure hurts most get the most retain rows (0 = uniform)"
        },
    )
    retain_unconditional: float = field(
        default=0.5,
        metadata={
            "help": "share of each retain batch's rows taken with the unconditional input ∅ instead of their prompt "
            "(same latents and timesteps): classifier-free guidance mixes the model's ∅ prediction into every "
            "image, so an erasure that moves it changes concepts the retain prompts alone still match "
            "(0 = the retain loss of ESD and the seed paper; with eupmu on the default model's 14 concepts, seed 0: "
            "0 met the quality bar on 10, 0.5 on 12, 0.5 with --retain-focus 0.5 on all 14)"
        },
    )
    mask: Literal["none", "feasible"] = field(
        default="none",
        metadata={
            "help": "masked feasible updates: a coordinate moves only if a one-sided t-test over the retain "
            "gradient's micro-batches says moving it does not raise ℓ_r; the others keep their exact values, "
            "also under Adam"
        },
    )
    mask_delta: float = field(default=0.05, metadata={"help": "mask: 1 − confidence of the sign test"})
    mask_micro_batches: int = field(default=4, metadata={"help": "mask: micro-batches for the retain-gradient spread"})
    x_source: Literal["bank", "sample", "trajectory"] = field(
        default="bank",
        metadata={
            "help": "where x_t comes from: `bank` noises latents the frozen model drew once (fast; cached on "
            "disk); `trajectory` takes x_t from the frozen model's own sampling paths, drawn once with its "
            "predictions there (cached on disk too, as large as they are in memory), so a step runs no frozen "
            "forward (fastest; x_t from a finite set at the sampler's timesteps, which erased a little less on the "
            "default model: README, Benchmarks); `sample` "
            "samples with the model being trained down to t at every step (ESD's slow path)"
        },
    )
    adversarial_every: int = field(
        default=0,
        metadata={
            "help": "adversarial training (AdvUnlearn): every N steps, find for each forget prompt "
            "--adversarial-tokens soft prefix tokens that bring the concept back in the model being erased; the "
            "unlearning loss then uses the prompts with those prefixes (0 = off; each round costs about "
            "--adversarial-iterations steps)"
        },
    )
    adversarial_tokens: int = field(default=1, metadata={"help": "adversarial training: prefix tokens k"})
    adversarial_iterations: int = field(
        default=30, metadata={"help": "adversarial training: Adam steps per attack round (AdvUnlearn: 30)"}
    )
    adversarial_lr: float = field(
        default=1e-3, metadata={"help": "adversarial training: the attack's Adam learning rate (AdvUnlearn: 1e-3)"}
    )
    bank_size: int = field(
        default=8, metadata={"help": "latents generated per prompt for the latent bank (paths, for trajectory)"}
    )
    bank_steps: int = field(
        default=20, metadata={"help": "sampler steps for the latent bank (and --x-source sample, trajectory)"}
    )
    bank_guidance: float = field(
        default=5.0, metadata={"help": "guidance for the latent bank (and --x-source sample, trajectory)"}
    )
    t_min: int = field(default=0, metadata={"help": "smallest training timestep"})
    t_max: int = field(default=999, metadata={"help": "largest training timestep"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0 = off)"})
    mixed_precision: Literal["no", "fp16", "bf16"] = field(
        default="no", metadata={"help": "Accelerate mixed precision"}
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "recompute the UNet's activations in backward instead of keeping them (less memory, slower)"},
    )
    offload_encoders: bool = field(
        default=False,
        metadata={
            "help": "move the text encoder(s) and VAE to the CPU once the prompts are encoded and the latent bank "
            "exists: training never calls them (frees their accelerator memory)"
        },
    )
    joint_forward: bool | None = field(
        default=None,
        metadata={
            "help": "run the forget and retain halves through the trained UNet as one call of 2B latents with one "
            "backward: a call's fixed cost once instead of twice (0.60-0.65x a step at batch 1 on an H200). By "
            "default on wherever a step's gradient is one backward of l_u + λ·l_r (weighted, eupmu, eupmu-fast), off "
            "for explicit and none; --no-joint-forward runs two calls, as runs before 2026-11-26 did (the same "
            "arithmetic per row; the gradient's sums run in another order, so not bit for bit)"
        },
    )
    half_frozen: bool = field(
        default=False,
        metadata={
            "help": "hold the UNet tensors the run does not train, and the originals of those it trains, in the "
            "--mixed-precision dtype (bf16/fp16) instead of fp32: half their accelerator memory. Autocast multiplies "
            "in that precision anyway; norms see rounded weights. The saved model gets its fp32 values back "
            "(a copy kept in host memory). Needs --mixed-precision bf16 or fp16"
        },
    )
    checkpoint_every: int = field(default=50, metadata={"help": "steps between resumable checkpoints"})
    seed: int = field(default=0, metadata={"help": "seed for the bank, batches, noise and timesteps"})
    resume: bool = field(default=False, metadata={"help": "continue the run in --output from its last checkpoint"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing --output"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        check_types(self)
        for name, value in BALANCERS[self.method].defaults.items():  # the method's own defaults
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.resume and self.overwrite:
            raise InputError(
                "--resume continues the run in --output and --overwrite starts it afresh; give one of them"
            )
        if self.concept is not None and not self.concept.strip():
            raise InputError('--concept is empty; give the prompt to erase, e.g. "a plain drawing of the digit three"')
        if (self.concept is None) == (self.forget is None):
            raise InputError("give exactly one of --concept (a prompt) or --forget (a prompt list)")
        for name in ("steps", "batch_size", "bank_size", "bank_steps", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in (
            "eta",
            "learning_rate",
            "retain_budget",
            "lambda_lr",
            "lambda_init",
            "lambda_max",
            "retain_weight",
            "max_grad_norm",
            "bank_guidance",
            "mask_delta",
        ):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise InputError(f"--{name.replace('_', '-')} must be a finite number ≥ 0, got {value}")
        check_seed(self.seed)
        if self.batch_size > MAX_BATCH:
            raise InputError(f"--batch-size must be at most {MAX_BATCH}, got {self.batch_size}")
        for name in ("learning_rate", "lambda_lr"):
            if getattr(self, name) == 0:
                raise InputError(f"--{name.replace('_', '-')} must be > 0, got 0")
        if self.lambda_gain is not None and not (math.isfinite(self.lambda_gain) and self.lambda_gain > 0):
            raise InputError(f"--lambda-gain must be a finite number > 0, got {self.lambda_gain}")
        if self.lambda_warmup < 3:
            raise InputError(f"--lambda-warmup must be at least 3 (steps to measure on), got {self.lambda_warmup}")
        if not (math.isfinite(self.lambda_smoothing) and 0 <= self.lambda_smoothing < 1):
            raise InputError(f"--lambda-smoothing is a decay in [0, 1), got {self.lambda_smoothing}")
        if self.lambda_smoothing and self.method != "eupmu-fast":
            raise InputError(
                f"--lambda-smoothing is for --method eupmu-fast (its ℓ_r from batch to batch); "
                f"--method {self.method} has no such average: drop --lambda-smoothing"
            )
        if self.lambda_init > self.lambda_max:
            raise InputError(f"--lambda-init {self.lambda_init} is above --lambda-max {self.lambda_max}; lower it")
        if self.retain_probe != "same" and self.method != "eupmu":
            raise InputError(
                f"--retain-probe {self.retain_probe} is for --method eupmu (λ from ℓ_r re-measured after the step); "
                f"--method {self.method} measures no Δℓ_r after the step: drop --retain-probe"
            )
        for name in ("retain_unconditional", "retain_focus"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 <= value <= 1):
                raise InputError(f"--{name.replace('_', '-')} is a share in [0, 1], got {value}")
        if self.lora_rank < 1:
            raise InputError(f"--lora-rank must be at least 1, got {self.lora_rank}")
        if self.lora_alpha is not None and not (math.isfinite(self.lora_alpha) and self.lora_alpha > 0):
            raise InputError(f"--lora-alpha must be a finite number > 0, got {self.lora_alpha}")
        if not (math.isfinite(self.lora_dropout) and 0 <= self.lora_dropout < 1):
            raise InputError(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
        if not any(t.strip() for t in self.lora_targets.split(",")):
            raise InputError('--lora-targets is empty; give module-name suffixes, e.g. "attn2.to_k,attn2.to_v"')
        if not 0 <= self.t_min <= self.t_max <= 999:
            raise InputError(f"timesteps must satisfy 0 ≤ --t-min ≤ --t-max ≤ 999, got {self.t_min}..{self.t_max}")
        if self.mask == "feasible" and (self.mask_micro_batches < 2 or not 0 < self.mask_delta < 0.5):
            raise InputError("--mask feasible needs --mask-micro-batches ≥ 2 and 0 < --mask-delta < 0.5")
        if self.half_frozen and self.mixed_precision == "no":
            raise InputError(
                "--half-frozen holds weights in the --mixed-precision dtype; add --mixed-precision bf16 (or fp16)"
            )
        if self.adversarial_every < 0 or self.adversarial_tokens < 1 or self.adversarial_iterations < 1:
            raise InputError(
                "--adversarial-every must be ≥ 0 (0 = off), --adversarial-tokens and --adversarial-iterations ≥ 1"
            )
        if not (math.isfinite(self.adversarial_lr) and self.adversarial_lr > 0):
            raise InputError(f"--adversarial-lr must be a finite number > 0, got {self.adversarial_lr}")
        if self.adversarial_every and self.x_source == "sample":
            raise InputError(
                "--adversarial-every attacks on forget latents drawn once, not sampled at every step; use "
                "--x-source bank (the default) or trajectory"
            )
        if self.adversarial_every and self.offload_encoders:
            raise InputError(
                "--adversarial-every encodes the attacked prompts during training, so the text encoders stay on "
                "the accelerator: drop --offload-encoders"
            )
        if self.joint_forward and not BALANCERS[self.method].can_join_halves():
            raise InputError(
                f"--joint-forward joins the halves of one backward of ℓ_u + λ·ℓ_r; --method {self.method} "
                "takes ℓ_u's gradient on its own: use weighted, eupmu or eupmu-fast, or drop --joint-forward"
            )
        if self.mask == "feasible" and self.batch_size % self.mask_micro_batches:
            raise InputError("--batch-size must be a multiple of --mask-micro-batches")


# Settings an option reads (methods and parameter sets declare theirs as ``reads``). Given to a
# run without it they change nothing; `erase train` says so in a note rather than refusing,
# because a sweep hands one set of flags to every method it compares.
OPTION_READS = {
    "--mask feasible": (lambda c: c.mask == "feasible", ("mask_delta", "mask_micro_batches")),
    "--adversarial-every N": (
        lambda c: bool(c.adversarial_every),
        ("adversarial_tokens", "adversarial_iterations", "adversarial_lr"),
    ),
    "--loss negative-guidance": (lambda c: c.loss == "negative-guidance", ("eta",)),
}


def unread_settings(
    config: TrainConfig, given: set[str], where: str = "this run", method_option: str = "--method"
) -> list[str]:
    """A note for each setting in ``given`` (the names the user set) that this run does not read
    (``where`` and ``method_option`` name the run and how it picks a method: a sweep's ``--grid``)."""
    readers = [
        (f"{method_option} {b.name}", lambda c, b=b: c.method == b.name, b.reads) for b in BALANCERS.values()
    ] + [(f"--parameters {n}", lambda c, n=n: c.parameters == n, s.reads) for n, s in PARAMETER_SETS.items()]
    readers += [(option, reads, names) for option, (reads, names) in OPTION_READS.items()]
    notes = []
    for name in sorted(given):
        who = [(option, reads) for option, reads, names in readers if name in names]
        if who and not any(reads(config) for _, reads in who):
            options = " or ".join(option for option, _ in who)
            notes.append(f"note: {flag(name)} changes nothing in {where}; only {options} reads it")
    return notes
