"""What a run costs at full size: memory a run adds to the loaded pipeline and median step time,
per parameter set (xattn, full, lora) and balancer, on random-weight UNets built from the shipped
SD 1.5 / 2.1 / XL configs (no download), with the frozen original taken from the trained UNet
itself (today) or from a deep copy (how it was before; `--frozen copy`), with and without
`--gradient-checkpointing` (`--checkpointing off on`). On CUDA the encoders are offloaded.

    python scripts/bench_scale.py --families sd15 --parameters xattn full lora --frozen swap copy
    python scripts/bench_scale.py --smoke          # tiny models: checks the script (CI can afford it)

Each configuration runs in its own process, so its memory figures start clean: on CUDA the
allocator's peak (torch.cuda.max_memory_allocated), on a CPU the process's resident set (RSS,
read from /proc). "run adds" is measured after setup and one step (frozen originals, latent
bank, gradients, Adam state); "step peak" is the highest value during the timed steps above the
pipeline. Step times within one configuration are medians; compare configurations as ratios
printed by the same invocation (the CPU's absolute times drift by ±25%).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

GIB = 2**30


def rss_gib() -> float:
    """This process's resident memory now (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / GIB
    return 0.0


def peak_rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / GIB
    return 0.0


def memory_gib(device: str) -> float:
    return torch.cuda.memory_allocated() / GIB if device == "cuda" else rss_gib()


def one(spec: dict) -> dict:
    """One configuration, in this process: build, set up, one step, then timed steps."""
    from bench_families_gpu import BY_CONFIG, random_pipeline, tiny_pipeline

    import erase.params as params
    from erase.config import TrainConfig
    from erase.loop import ErasureRun

    device = "cuda" if torch.cuda.is_available() and not spec["smoke"] else "cpu"
    family = BY_CONFIG[spec["family"]]
    if spec["frozen"] == "copy":  # the deep copy the loop kept before erase/frozen.py
        params.FrozenOriginal = lambda unet, names: copy.deepcopy(unet).requires_grad_(False).eval()
    build = tiny_pipeline if spec["smoke"] else random_pipeline
    start = memory_gib(device)
    pipe = build(family, device, torch.float32)
    unet_gib = sum(p.numel() * p.element_size() for p in pipe.unet.parameters()) / GIB
    loaded = memory_gib(device)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "retain.txt").write_text("a photo of a dog\na photo of a house\n")
        config = TrainConfig(
            output=str(Path(tmp) / "run"),
            concept="a photo of a church",
            retain=str(Path(tmp) / "retain.txt"),
            model="bench",
            method=spec["method"],
            parameters=spec["parameters"],
            steps=spec["steps"] + 1,
            batch_size=spec["batch"],
            bank_size=1,
            bank_steps=2,
            mixed_precision="bf16" if device == "cuda" else "no",
            checkpoint_every=10_000,
            progress=False,
            gradient_checkpointing=spec.get("checkpointing", False),
            offload_encoders=device == "cuda",
        )
        run = ErasureRun(config, pipe)
        run.check_inputs()
        run.setup()
        run.step = 0
        run.train_step()
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        adds = memory_gib(device) - loaded
        times = []
        for step in range(1, spec["steps"] + 1):
            run.step = step
            begin = time.perf_counter()
            run.train_step()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - begin)
        peak = torch.cuda.max_memory_allocated() / GIB if device == "cuda" else peak_rss_gib()
    return spec | {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "unet_gib": round(unet_gib, 3),
        "pipeline_gib": round(loaded - start, 3),
        "run_adds_gib": round(adds, 3),
        "step_peak_over_pipeline_gib": round(peak - loaded, 3),
        "median_step_s": round(statistics.median(times), 4),
    }


def frozen_bytes(families: list[str], parameter_sets: list[str]) -> None:
    """What the frozen original holds per family and parameter set, counted on UNets built on the
    meta device from the shipped configs (no weights, no compute): the trained tensors' originals
    (fp32) against the deep copy of the whole UNet the loop kept before. LoRA holds none."""
    from accelerate import init_empty_weights
    from bench_families_gpu import BY_CONFIG
    from diffusers import UNet2DConditionModel

    from erase.params import PARAMETER_SETS

    print("| family | parameters | frozen originals GiB (fp32) | deep copy GiB (fp32) |")
    print("|---|---|---|---|")
    for name in families:
        config = json.loads((BY_CONFIG[name].config_dir / "unet" / "config.json").read_text())
        with init_empty_weights():
            unet = UNet2DConditionModel.from_config(config)
        whole = sum(p.numel() for p in unet.parameters()) * 4 / GIB
        for chosen in parameter_sets:
            entry = PARAMETER_SETS[chosen]
            kept = 0.0 if chosen == "lora" else sum(p.numel() for n, p in unet.named_parameters() if entry.keep(n)) * 4
            print(f"| {name} | {chosen} | {kept / GIB:.3f} | {whole:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", default=["sd15"], choices=["sd15", "sd21", "sdxl"])
    parser.add_argument("--parameters", nargs="+", default=["xattn", "full", "lora"])
    parser.add_argument("--methods", nargs="+", default=["weighted"])
    parser.add_argument("--frozen", nargs="+", default=["swap", "copy"], choices=["swap", "copy"])
    parser.add_argument("--batch", nargs="+", type=int, default=[1])
    parser.add_argument(
        "--checkpointing", nargs="+", default=["off"], choices=["off", "on"], help="--gradient-checkpointing"
    )
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks this script only")
    parser.add_argument("--out", default=None, help="also append the JSON records to this file")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one configuration
    parser.add_argument("--frozen-bytes", action="store_true", help="only count what the frozen original holds")
    args = parser.parse_args()
    if args.frozen_bytes:
        frozen_bytes(args.families, args.parameters)
        return
    if args.one:
        print(json.dumps(one(json.loads(args.one))))
        return
    records = []
    for family in args.families:
        for parameters in args.parameters:
            for method in args.methods:
                for batch in args.batch:
                    for frozen, checkpointing in itertools.product(args.frozen, args.checkpointing):
                        if parameters == "lora" and frozen == "copy":  # LoRA's frozen model is its adapters off
                            continue
                        spec = dict(
                            checkpointing=checkpointing == "on",
                            family=family,
                            parameters=parameters,
                            method=method,
                            batch=batch,
                            frozen=frozen,
                            steps=args.steps,
                            smoke=args.smoke,
                        )
                        done = subprocess.run(
                            [sys.executable, __file__, "--one", json.dumps(spec)],
                            capture_output=True,
                            text=True,
                        )
                        if done.returncode:
                            sys.exit(f"{spec} failed:\n{done.stderr[-3000:]}")
                        record = json.loads(done.stdout.strip().splitlines()[-1])
                        records.append(record)
                        print(json.dumps(record), flush=True)
                        if args.out:
                            with open(args.out, "a") as handle:
                                handle.write(json.dumps(record) + "\n")
    print(
        "\n| family | parameters | method | batch | frozen | ckpt | UNet GiB | run adds GiB | step peak GiB | step s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in records:
        print(
            f"| {r['family']} | {r['parameters']} | {r['method']} | {r['batch']} | {r['frozen']} "
            f"| {'on' if r.get('checkpointing') else 'off'} | {r['unet_gib']:.2f} "
            f"| {r['run_adds_gib']:.2f} | {r['step_peak_over_pipeline_gib']:.2f} | {r['median_step_s']:.3f} |"
        )


if __name__ == "__main__":
    main()
