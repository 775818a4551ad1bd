"""The compute an `erase train` run asks for at full size (SD 1.5 / 2.1 / XL), counted on a CPU.

Why: the end-to-end targets (an SD 1.5 erase in ≤ 60 s on one GPU) are met or missed by the work
a run's settings ask for before any kernel is tuned, and a GPU is lent for minutes. The work is
hardware-independent and can be counted here, so settings can be chosen before the GPU is.

How, in two parts that are each exact:
  * which UNet calls a run makes, with how many latents each and whether a backward pass goes
    through it: recorded by a hook on the UNet while the real `erase train` runs, with the same
    settings, on the suite's tiny model of the family (the calls do not depend on the UNet's size);
  * what one call costs at full size: the family's standard UNet built on the meta device from the
    shipped config (no weights, no compute), one latent at its native size, counted by torch's
    FlopCounterMode (matrix products, convolutions, attention), without and with the backward
    pass of the run's trained parameter set.
The run's FLOPs are the sum over its calls. tests/test_count_flops.py checks the sum against
FlopCounterMode over a whole real run of the tiny model. The text encoders are left out (they
run once per prompt), and so are the optimiser and the losses, which make no matrix products.
With `--parameters lora`, every call is costed with the adapters' branches, also the frozen ones
that run with them switched off (an upper bound by the adapters' share, printed). Adversarial
rounds (`--adversarial-every`) backpropagate to the prompt's embedding, not to the trained
tensors; they are priced as the run's own backward, which the test does not cover.

    python scripts/count_flops.py --families sd15 sdxl --parameters xattn
    python scripts/count_flops.py --families sd15 --set x_source=trajectory bank_steps=10 --batch 8
    python scripts/count_flops.py --families sd15 --cached-retain    # a second concept on the same model
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from unittest.mock import patch

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

PETA = 1e15
OTHER_CONCEPT = "a photo of a lighthouse"  # --cached-retain: the run that draws the retain bank first


@contextmanager
def recorded_calls(unet: torch.nn.Module):
    """Every call of ``unet`` while the block runs, as (latents, graph): graph is whether its
    output carries autograd history, that is whether a backward pass will go through it."""
    calls: list[tuple[int, bool]] = []

    def hook(module, args, kwargs, output):
        sample = args[0] if args else kwargs["sample"]
        out = output[0] if isinstance(output, tuple) else output.sample
        calls.append((int(sample.shape[0]), bool(out.requires_grad)))

    handle = unet.register_forward_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def meta_inputs(config: dict, latent: tuple[int, int], tokens: int) -> dict:
    """The UNet's inputs for one latent on the meta device, shaped as its config asks."""
    meta, rows = dict(device="meta"), 1
    inputs = dict(
        sample=torch.empty(rows, config["in_channels"], *latent, **meta),
        timestep=torch.zeros(rows, dtype=torch.long, **meta),
        encoder_hidden_states=torch.empty(rows, tokens, config["cross_attention_dim"], **meta),
    )
    if config.get("addition_embed_type") == "text_time":  # SDXL: pooled text and six size numbers
        times = 6 * config["addition_time_embed_dim"]
        pooled = config["projection_class_embeddings_input_dim"] - times
        inputs["added_cond_kwargs"] = dict(
            text_embeds=torch.empty(rows, pooled, **meta), time_ids=torch.empty(rows, 6, **meta)
        )
    return inputs


def attention_as_products():
    """Attention computed as its two matrix products, which FlopCounterMode counts on every
    device; the CPU's fused attention kernel it does not count at all."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def call_flops(config: dict, parameters: str, settings: dict, tokens: int) -> dict:
    """FLOPs of one latent at its native size (the config's ``sample_size``, where runs draw
    their latents) through the UNet of ``config``: a forward alone, and a forward with the
    backward pass that trains ``parameters`` (gradients for those tensors and the activations
    between them and the output, none for the rest)."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    from erase.params import PARAMETER_SETS

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
        PARAMETER_SETS[parameters].attach(unet, settings)
    size = config["sample_size"]
    inputs = meta_inputs(config, (size, size) if isinstance(size, int) else tuple(size), tokens)
    with attention_as_products(), FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(**inputs)
    forward = counter.get_total_flops()
    with attention_as_products(), FlopCounterMode(display=False) as counter:
        unet(**inputs).sample.sum().backward()
    return {"forward": forward, "graph": counter.get_total_flops()}


def pipeline_call_flops(pipe, parameters: str, settings: dict) -> dict:
    """``call_flops`` for the UNet of a loaded pipeline, at its text encoder's length."""
    tokens = pipe.text_encoder.config.max_position_embeddings
    return call_flops(dict(pipe.unet.config), parameters, settings, tokens)


def compose(calls: list[tuple[int, bool]], cost: dict) -> int:
    """The FLOPs of ``calls`` at ``cost`` per latent (FLOPs grow with the latents exactly)."""
    return sum(rows * cost["graph" if graph else "forward"] for rows, graph in calls)


def build_run(spec: dict, folder: Path, pipe=None):
    """`erase train` with ``spec``'s settings on the family's tiny model (or ``pipe``), checked,
    not yet set up."""
    from bench_families_gpu import BY_CONFIG, tiny_pipeline
    from bench_scale import _config, _typed, method_settings

    from erase.loop import ErasureRun

    pipe = pipe or tiny_pipeline(BY_CONFIG[spec["family"]], "cpu", torch.float32)
    overrides = ({"batch_size": spec["batch"]} if spec.get("batch") else {}) | _typed(spec.get("set", []))
    settings = method_settings(spec["method"]) | overrides
    run = ErasureRun(_config({**spec, "smoke": True}, "cpu", folder / "run", **settings), pipe)
    run.check_inputs()
    return run


def record_run(spec: dict) -> dict:
    """Run `erase train` with ``spec``'s settings on the family's tiny model and record its UNet
    calls: setup (the bank, paths) and training (steps, adversarial rounds) apart.

    The latent bank is cached on disk per prompt list, so the retain list's bank is drawn once
    per model and settings: with ``spec["cached_retain"]`` a run for another concept sets up
    first, and the counted run draws only its concept's bank, as every erase after the first does."""
    with tempfile.TemporaryDirectory() as tmp, patch.dict(os.environ, ERASE_CACHE_DIR=tmp):
        # a fresh cache: a bank drawn by an earlier run would cost nothing
        run = build_run(spec, Path(tmp))
        if spec.get("cached_retain"):
            other = {**spec, "set": [*spec.get("set", []), f"concept={OTHER_CONCEPT}"]}
            build_run(other, Path(tmp) / "other", pipe=run.pipe).setup()
        with recorded_calls(run.pipe.unet) as setup:
            run.setup()
        with recorded_calls(run.pipe.unet) as training:
            run.train()
    prompts = len(run.forget_prompts) + len(run.retain_prompts)
    return {"config": run.config, "setup": setup, "training": training, "prompts": prompts}


def full_size(family: str) -> tuple[dict, int]:
    """The shipped UNet config of ``family`` and its text length."""
    from bench_families_gpu import BY_CONFIG

    from pipelines.loading import shipped_config_folder

    folder = shipped_config_folder(BY_CONFIG[family])
    config = json.loads((folder / "unet" / "config.json").read_text())
    tokens = json.loads((folder / "text_encoder" / "config.json").read_text())["max_position_embeddings"]
    return config, tokens


def count(spec: dict) -> dict:
    """One record: the run's calls and its FLOPs at the family's full size."""
    from dataclasses import asdict

    recorded = record_run(spec)
    config = recorded["config"]
    unet_config, tokens = full_size(spec["family"])
    cost = call_flops(unet_config, config.parameters, asdict(config), tokens)
    per_step = Counter((rows, graph) for rows, graph in recorded["training"])
    record = {
        "family": spec["family"],
        "parameters": config.parameters,
        "method": config.method,
        "set": spec.get("set", []),
        "cached_retain": bool(spec.get("cached_retain")),
        "steps": config.steps,
        "batch": config.batch_size,
        "bank_latents": config.bank_size * recorded["prompts"],
        "forward_tflop": round(cost["forward"] / 1e12, 4),
        "forward_backward_tflop": round(cost["graph"] / 1e12, 4),
        "calls_per_step": {
            f"{rows}{'+bwd' if graph else ''}": n / config.steps for (rows, graph), n in per_step.items()
        },
        "setup_pflop": compose(recorded["setup"], cost) / PETA,
        "train_pflop": compose(recorded["training"], cost) / PETA,
    }
    if config.parameters == "lora":
        plain = call_flops(unet_config, "xattn", asdict(config), tokens)
        record["lora_share_of_forward"] = round(1 - plain["forward"] / cost["forward"], 5)
    record["total_pflop"] = record["setup_pflop"] + record["train_pflop"]
    return record


def main(argv: list[str] | None = None) -> list[dict]:
    from bench_scale import default_method

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", default=["sd15"], choices=["sd15", "sd21", "sdxl"])
    parser.add_argument("--parameters", nargs="+", default=["xattn"], choices=["xattn", "noxattn", "full", "lora"])
    parser.add_argument("--method", default=None, help="the run's method (default: erase train's)")
    parser.add_argument("--batch", type=int, default=None, help="--batch-size (default: the run's own)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="erase train settings")
    parser.add_argument(
        "--cached-retain",
        action="store_true",
        help="the retain list's latent bank comes from the disk cache, as in every erase after the first on a model",
    )
    parser.add_argument("--out", default=None, help="also append the JSON records to this file")
    args = parser.parse_args(argv)
    records = []
    for family in args.families:
        for parameters in args.parameters:
            spec = dict(
                family=family,
                parameters=parameters,
                method=args.method or default_method(),
                batch=args.batch,
                set=args.set,
                cached_retain=args.cached_retain,
            )
            record = count(spec)
            records.append(record)
            print(json.dumps(record), flush=True)
            if args.out:
                with open(args.out, "a") as handle:
                    handle.write(json.dumps(record) + "\n")
    print("\n| family | parameters | method | settings | bank latents | setup PFLOP | training PFLOP | total PFLOP |")
    print("|---|---|---|---|---|---|---|---|")
    for r in records:
        settings = " ".join(
            [f"batch_size={r['batch']}", *r["set"], *(["retain bank cached"] if r["cached_retain"] else [])]
        )
        print(
            f"| {r['family']} | {r['parameters']} | {r['method']} | {settings} | {r['bank_latents']} "
            f"| {r['setup_pflop']:.2f} | {r['train_pflop']:.2f} | {r['total_pflop']:.2f} |"
        )
    return records


if __name__ == "__main__":
    main()
