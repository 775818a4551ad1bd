"""What a run costs at full size, on random-weight UNets built from the shipped SD 1.5 / 2.1 / XL
configs (no download); the text encoders and VAEs are built the same way, at full size.

Step table (default): one process per family × parameter set (xattn, full, lora) × batch ×
memory lever; inside it one run whose balancer is swapped step by step, so every method's steps
are timed interleaved on the same weights and reported as ratios to `weighted`. Memory, on CUDA
from torch's allocator counters: the pipeline as loaded, what the run adds after setup and a
warm-up step per method (frozen originals, latent bank, gradients, Adam state), and each method's
peak during its steps (what a run of that method alone peaks at). On a CPU the process's peak
resident set is reported instead, for the whole group. Each method's UNet FLOPs a step (its calls
priced by scripts/count_flops.py) over its step time give the rate it achieved.

    python scripts/bench_scale.py --families sd15 --parameters xattn full lora --batch 1 4
    python scripts/bench_scale.py --families sd15 --frozen copy --half-frozen on   # memory levers

End to end (`--e2e`): `erase train` of one concept at the family's native size with the run's
defaults (latent bank of 8 latents per prompt, 20 sampler steps; 200 steps; bf16 on CUDA; the
retain list prompts/lists/sd/retain-general.txt), saved to a temporary folder: wall time of setup
(prompt encoding and the bank) and of training (steps, checkpoints, save), peak memory, and the
UNet FLOPs of each (scripts/count_flops.py prices the calls the run made) over its time: the rate
the run achieved.

    python scripts/bench_scale.py --e2e --families sd15 sdxl --parameters xattn lora

    python scripts/bench_scale.py --e2e --families sd15 --batch 4 --half-frozen on --set bank_size=4

`--set KEY=VALUE` overrides any `erase train` setting of the end-to-end run (TrainConfig's field
names); `--batch` there sets --batch-size (the run's default when not given).

Where the time of a step goes (`--profile`): a few steps of one method under torch's profiler:
wall time per step against the time the accelerator spent in kernels, the UNet calls per step,
and the operators that cost the host the most time. A step whose kernel time is far below its wall
time is bound by the host launching kernels, not by the accelerator.

    python scripts/bench_scale.py --profile --families sd15 --parameters xattn --batch 1 16

`--smoke` runs any mode on tiny models on a CPU (what CI can afford; it checks the script, its
figures mean nothing). `--frozen-bytes` counts what the frozen original holds, without running.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

GIB = 2**30
METHODS = ["weighted", "none", "eupmu-fast", "eupmu", "explicit"]
RETAIN = ROOT / "prompts" / "lists" / "sd" / "retain-general.txt"


def peak_rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / GIB
    return 0.0


def allocated_gib(device: str) -> float:
    return torch.cuda.memory_allocated() / GIB if device == "cuda" else 0.0


def peak_gib(device: str) -> float:
    return torch.cuda.max_memory_allocated() / GIB if device == "cuda" else peak_rss_gib()


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class DeepCopy:
    """The frozen original as ESD-style code keeps it (before erase/frozen.py): a second UNet."""

    def __init__(self, unet, names):
        self.copy = copy.deepcopy(unet).requires_grad_(False).eval()

    def __call__(self, *args, **kwargs):
        with torch.no_grad():
            return self.copy(*args, **kwargs)

    def hold_in(self, dtype):
        self.copy.to(dtype)


def _pipeline(spec: dict):
    from bench_families_gpu import BY_CONFIG, random_pipeline, tiny_pipeline

    import erase.params as params

    device = "cuda" if torch.cuda.is_available() and not spec["smoke"] else "cpu"
    if spec.get("frozen") == "copy":
        params.FrozenOriginal = DeepCopy
    build = tiny_pipeline if spec["smoke"] else random_pipeline
    pipe = build(BY_CONFIG[spec["family"]], device, torch.float32)
    if spec.get("memory_cap_gb") and device == "cuda":
        # A smaller card, emulated: torch's allocator refuses past the cap as the card would (the CUDA
        # context's few hundred MB are not counted), so the bank's halving and the step's
        # out-of-memory message behave as they would there.
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, spec["memory_cap_gb"] * 1e9 / total))
    return pipe, device


def _config(spec: dict, device: str, output: Path, **overrides):
    from erase.config import TrainConfig

    settings = dict(
        output=str(output),
        concept="a photo of a church",
        retain=str(RETAIN),
        model="bench",
        parameters=spec["parameters"],
        mixed_precision="bf16" if device == "cuda" else "no",
        progress=False,
        gradient_checkpointing=spec.get("checkpointing", False),
        half_frozen=spec.get("half_frozen", False) and device == "cuda",
        offload_encoders=device == "cuda",
    )
    return TrainConfig(**(settings | overrides))


def _step_run(spec: dict, device: str, pipe, tmp: Path, **overrides):
    """A set-up run for timing single steps: a one-latent bank, no checkpoints, no end."""
    from erase.loop import ErasureRun

    settings = dict(steps=10**6, batch_size=spec["batch"], bank_size=1, bank_steps=2, checkpoint_every=10**6)
    run = ErasureRun(_config(spec, device, tmp / "run", **(settings | overrides)), pipe)
    run.check_inputs()
    run.setup()
    return run


def default_method() -> str:
    from erase.config import TrainConfig

    return TrainConfig.method


LEVERS = {"joint", "halves", "apart"}  # a --methods entry's +suffixes


def method_settings(method: str) -> dict:
    """TrainConfig fields for a --methods entry: a method, or eupmu:<probe> (eupmu:next, eupmu:fresh),
    with ``+joint`` for --joint-forward, ``+halves`` for --no-joint-forward (the default since
    2026-11-26 joins them wherever the method allows; ``+apart``: see ``calls_apart``). Settings whose default is
    a method's own (λ's rate, eupmu-fast's smoothing) go back to None, so each method gets its own:
    the run's config holds the first method's."""
    from erase.balancers import BALANCERS

    base, *levers = method.split("+")
    if set(levers) - LEVERS:
        unknown = ", +".join(sorted(set(levers) - LEVERS))
        raise SystemExit(f"unknown +{unknown} in {method!r}; use +joint, +halves or +apart")
    name, _, probe = base.partition(":")
    own = {setting: None for balancer in BALANCERS.values() for setting in balancer.defaults}
    settings = own | {"method": name} | ({"retain_probe": probe} if probe else {})
    joint = {"joint_forward": True} if "joint" in levers else {"joint_forward": False} if "halves" in levers else {}
    return settings | joint


def calls_apart(method: str) -> bool:
    """``+apart``: the step's frozen targets called one by one, as before they were joined."""
    return "apart" in method.split("+")[1:]


def step_table(spec: dict) -> list[dict]:
    """One group: every method's steps on one run, interleaved (the order rotates each round)."""
    from bench_step_cost import frozen_calls_one_by_one
    from count_flops import pipeline_call_flops, recorded_calls

    from erase.loop import balancer_for

    pipe, device = _pipeline(spec)
    unet_gib = sum(p.numel() * p.element_size() for p in pipe.unet.parameters()) / GIB
    loaded = allocated_gib(device)
    methods = spec["methods"]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["ERASE_CACHE_DIR"] = tmp
        run = _step_run(spec, device, pipe, Path(tmp))
        config = run.config
        configs = {m: replace(config, **method_settings(m)) for m in methods}
        balancers = {m: balancer_for(configs[m]) for m in methods}
        joined, apart = run._frozen_epsilons, frozen_calls_one_by_one(run)
        ahead = {m: None for m in methods}  # --retain-probe next: each method's own batch drawn ahead
        times = {m: [] for m in methods}
        peaks = {m: 0.0 for m in methods}
        calls = {m: [] for m in methods}  # the UNet calls of the timed steps, priced below
        for round_ in range(spec["steps"] + 1):  # round 0 warms up (kernels, Adam state)
            order = methods[round_ % len(methods) :] + methods[: round_ % len(methods)]
            for method in order:
                run.balancer, run.step, run.lookahead = balancers[method], round_, ahead[method]
                run.config, run._frozen_epsilons = configs[method], apart if calls_apart(method) else joined
                reset_peak(device)
                begin = time.perf_counter()
                with recorded_calls(pipe.unet) as step_calls:
                    run.train_step()
                sync(device)
                ahead[method] = run.lookahead
                if round_:
                    times[method].append(time.perf_counter() - begin)
                    peaks[method] = max(peaks[method], peak_gib(device))
                    calls[method] += step_calls
            if round_ == 0:
                adds = allocated_gib(device) - loaded
    reference = statistics.median(times[methods[0]])
    common = {k: spec[k] for k in ("family", "parameters", "batch", "frozen", "checkpointing", "half_frozen")}
    cost = pipeline_call_flops(pipe, config.parameters, asdict(config))
    rates = {m: achieved(cost, {"step": (calls[m], sum(times[m]))}) for m in methods}
    return [
        common
        | {
            "method": method,
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "unet_gib": round(unet_gib, 3),
            "pipeline_gib": round(loaded, 3),
            "run_adds_gib": round(adds, 3),
            "peak_gib": round(peaks[method], 3),
            "median_step_s": round(statistics.median(times[method]), 4),
            f"vs_{methods[0]}": round(statistics.median(times[method]) / reference, 3),
            "unet_calls_per_step": len(calls[method]) / len(times[method]),
            "step_tflop": rates[method]["step_pflop"] * 1e3 / len(times[method]),
            "tflop_per_s": rates[method]["step_tflop_per_s"],
        }
        for method in methods
    ]


def profile_step(spec: dict) -> list[dict]:
    """Where one method's step spends its time: wall against kernel time, UNet calls, host hot spots."""
    from bench_step_cost import frozen_calls_apart
    from torch.profiler import ProfilerActivity, profile

    pipe, device = _pipeline(spec)
    calls = []
    pipe.unet.register_forward_pre_hook(lambda *_: calls.append(1))
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["ERASE_CACHE_DIR"] = tmp
        run = _step_run(spec, device, pipe, Path(tmp), **method_settings(spec["method"]))
        if calls_apart(spec["method"]):
            frozen_calls_apart(run)
        for _ in range(3):  # kernels chosen, Adam state allocated, λ calibrated
            run.train_step()
        sync(device)
        steps = max(spec["steps"], 1)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        calls.clear()
        begin = time.perf_counter()  # wall time without the profiler's own cost
        for _ in range(steps):
            run.train_step()
        sync(device)
        wall = (time.perf_counter() - begin) / steps
        unet_calls = len(calls) / steps
        with profile(activities=activities) as prof:
            for _ in range(steps):
                run.train_step()
            sync(device)
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]  # not the ops launching them
    kernel_s = sum(e.self_device_time_total for e in kernels) / 1e6 / steps
    busiest = sorted(kernels, key=lambda e: e.self_device_time_total, reverse=True)[:6]
    hot = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    common = {k: spec[k] for k in ("family", "parameters", "batch", "method", "checkpointing", "half_frozen")}
    return [
        common
        | {
            "profile": True,
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "wall_per_step_s": round(wall, 4),
            "kernel_per_step_s": round(kernel_s, 4),
            "unet_calls_per_step": unet_calls,
            "kernels_per_step": sum(e.count for e in kernels) // steps,
            "busiest_kernels": [
                [e.key[:80], e.count // steps, round(e.self_device_time_total / 1e6 / steps, 4)] for e in busiest
            ],
            "host_hot_spots": [[e.key, e.count // steps, round(e.self_cpu_time_total / 1e6 / steps, 4)] for e in hot],
        }
    ]


def end_to_end(spec: dict) -> list[dict]:
    """`erase train` of one concept with the run's defaults: setup (encoding, bank), then the
    steps, checkpoints and save; wall time of each, peak memory over each."""
    from bench_step_cost import frozen_calls_apart
    from count_flops import pipeline_call_flops, recorded_calls

    from erase.loop import LOG_NAME, ErasureRun

    pipe, device = _pipeline(spec)
    loaded = allocated_gib(device)
    smoke = dict(steps=4, bank_size=1, bank_steps=2, batch_size=2, checkpoint_every=2) if spec["smoke"] else {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["ERASE_CACHE_DIR"] = tmp  # no bank from an earlier run
        overrides = smoke | ({"batch_size": spec["batch"]} if spec["batch"] else {}) | _typed(spec["set"])
        config = _config(spec, device, Path(tmp) / "run", **(method_settings(spec["method"]) | overrides))
        reset_peak(device)
        begin = time.perf_counter()
        run = ErasureRun(config, pipe)
        if calls_apart(spec["method"]):
            frozen_calls_apart(run)
        run.check_inputs()
        with recorded_calls(pipe.unet) as setup_calls:
            run.setup()
        sync(device)
        setup_s, setup_peak = time.perf_counter() - begin, peak_gib(device)
        reset_peak(device)
        begin = time.perf_counter()
        with recorded_calls(pipe.unet) as train_calls:
            run.train()
        sync(device)
        train_s, train_peak = time.perf_counter() - begin, peak_gib(device)
        seconds = [json.loads(line)["seconds"] for line in (Path(tmp) / "run" / LOG_NAME).read_text().splitlines()]
    return [
        {k: spec[k] for k in ("family", "parameters", "method", "checkpointing", "half_frozen", "memory_cap_gb")}
        | {
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "steps": config.steps,
            "batch": config.batch_size,
            "bank_latents": config.bank_size * (len(run.forget_prompts) + len(run.retain_prompts)),
            "pipeline_gib": round(loaded, 3),
            "setup_s": round(setup_s, 1),
            "train_s": round(train_s, 1),
            "total_s": round(setup_s + train_s, 1),
            "median_step_s": round(statistics.median(b - a for a, b in itertools.pairwise(seconds)), 4),
            "set": spec["set"],
            "setup_peak_gib": round(setup_peak, 3),
            "train_peak_gib": round(train_peak, 3),
        }
        | achieved(
            pipeline_call_flops(pipe, config.parameters, asdict(config)),
            {"setup": (setup_calls, setup_s), "train": (train_calls, train_s)},
        )
    ]


def achieved(cost: dict, parts: dict[str, tuple[list, float]]) -> dict:
    """Each part's UNet FLOPs (its recorded calls at ``cost``, as scripts/count_flops.py prices
    them) and the rate its measured time gives: how much of the accelerator the run used."""
    from count_flops import compose

    record = {}
    for name, (calls, seconds) in parts.items():
        flops = compose(calls, cost)
        record[f"{name}_pflop"] = flops / 1e15
        record[f"{name}_tflop_per_s"] = flops / 1e12 / seconds
    return record


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


def _typed(settings: list[str]) -> dict:
    """``--set KEY=VALUE`` pairs as TrainConfig values of each field's type."""
    from dataclasses import fields

    from erase.config import TrainConfig
    from erase.config_args import value_from_text

    names = {f.name for f in fields(TrainConfig)}
    typed = {}
    for item in settings:
        key, _, value = item.partition("=")
        if key not in names:
            sys.exit(f"--set {item}: {key!r} is not a TrainConfig field")
        try:
            typed[key] = value_from_text(TrainConfig, key, value)
        except ValueError as err:
            sys.exit(f"--set {item}: {err}")
    return typed


def _in_process(spec: dict, failures: Path | None) -> list[dict]:
    """Each group in its own process, so its memory figures start clean. A group that fails is
    reported and skipped, its whole stderr kept next to --out, so one OOM does not end the plan."""
    done = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True)
    if done.returncode:
        print(f"{spec} failed:\n{done.stderr[-3000:]}", file=sys.stderr, flush=True)
        if failures is not None:
            with open(failures, "a") as handle:
                handle.write(f"=== {json.dumps(spec)}\n{done.stderr}\n")
        return []
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", default=["sd15"], choices=["sd15", "sd21", "sdxl"])
    parser.add_argument("--parameters", nargs="+", default=["xattn", "full", "lora"])
    parser.add_argument(
        "--methods",
        nargs="+",
        default=METHODS,
        help="the first is the reference of the ratios; eupmu:next and eupmu:fresh time eupmu with that "
        "--retain-probe; +joint adds --joint-forward (weighted+joint), +halves --no-joint-forward (the trained "
        "halves as two calls, the default before 2026-11-26), +apart calls the frozen targets one by one, as before "
        "they were joined into one call",
    )
    parser.add_argument("--frozen", nargs="+", default=["swap"], choices=["swap", "copy"])
    parser.add_argument("--half-frozen", nargs="+", default=["off"], choices=["off", "on"])
    parser.add_argument("--batch", nargs="+", type=int, default=None, help="default 1 4 (--e2e: the run's own)")
    parser.add_argument(
        "--checkpointing", nargs="+", default=["off"], choices=["off", "on"], help="--gradient-checkpointing"
    )
    parser.add_argument("--steps", type=int, default=8, help="timed rounds (one step of every method each)")
    parser.add_argument("--e2e", action="store_true", help="end-to-end erase of one concept instead")
    parser.add_argument(
        "--e2e-method",
        default=None,
        help="the method of --e2e and --profile (default: erase train's; +joint, +apart as in --methods)",
    )
    parser.add_argument(
        "--memory-cap-gb",
        type=float,
        default=None,
        help="CUDA: let torch's allocator use at most this many GB (10^9 bytes), as on a smaller card",
    )
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="--e2e: erase train settings")
    parser.add_argument("--profile", action="store_true", help="where a step's time goes, instead")
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks this script only")
    parser.add_argument("--out", default=None, help="also append the JSON records to this file")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one group
    parser.add_argument("--frozen-bytes", action="store_true", help="only count what the frozen original holds")
    args = parser.parse_args()
    if args.frozen_bytes:
        frozen_bytes(args.families, args.parameters)
        return
    if args.one:
        spec = json.loads(args.one)
        mode = end_to_end if spec.get("e2e") else profile_step if spec.get("profile") else step_table
        print(json.dumps(mode(spec)))
        return
    batches = args.batch or ([None] if args.e2e else [1, 4])
    failures = Path(args.out).with_suffix(".failures.txt") if args.out else None
    records = []
    levers = list(itertools.product(args.frozen, args.checkpointing, args.half_frozen))
    for family, parameters in itertools.product(args.families, args.parameters):
        for batch, (frozen, checkpointing, half) in itertools.product(batches, levers):
            if parameters == "lora" and frozen == "copy":  # LoRA's frozen model is its adapters off
                continue
            spec = dict(
                family=family,
                parameters=parameters,
                batch=batch,
                frozen=frozen,
                checkpointing=checkpointing == "on",
                half_frozen=half == "on",
                methods=args.methods,
                method=args.e2e_method or default_method(),
                steps=args.steps,
                smoke=args.smoke,
                e2e=args.e2e,
                profile=args.profile,
                set=args.set,
                memory_cap_gb=args.memory_cap_gb,
            )
            for record in _in_process(spec, failures):
                records.append(record)
                print(json.dumps(record), flush=True)
                if args.out:
                    with open(args.out, "a") as handle:
                        handle.write(json.dumps(record) + "\n")
    (print_e2e if args.e2e else print_profile if args.profile else print_steps)(records)


def print_profile(records: list[dict]) -> None:
    for r in records:
        print(
            f"\n{r['family']} {r['parameters']} batch {r['batch']} {r['method']} {_levers(r)}: "
            f"{r['wall_per_step_s']:.3f} s a step, {r['kernel_per_step_s']:.3f} s of it in kernels, "
            f"{r['unet_calls_per_step']:g} UNet calls, {r['kernels_per_step']} kernels"
        )
        for key, count, seconds in r["busiest_kernels"]:
            print(f"  kernel {key}: {count} a step, {seconds:.4f} s")
        print("| operator | calls a step | host s a step |\n|---|---|---|")
        for key, count, seconds in r["host_hot_spots"]:
            print(f"| {key} | {count} | {seconds:.4f} |")


def print_steps(records: list[dict]) -> None:
    ref = next((k for k in records[0] if k.startswith("vs_")), "vs_") if records else "vs_"
    print(
        f"\n| family | parameters | batch | levers | method | step s | {ref} | pipeline GiB | run adds GiB | peak GiB "
        "| TFLOP a step | TFLOP/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in records:
        print(
            f"| {r['family']} | {r['parameters']} | {r['batch']} | {_levers(r)} | {r['method']} "
            f"| {r['median_step_s']:.3f} | {r[ref]:.2f}× | {r['pipeline_gib']:.1f} | {r['run_adds_gib']:.2f} "
            f"| {r['peak_gib']:.1f} | {r['step_tflop']:.3g} | {r['tflop_per_s']:.3g} |"
        )


def print_e2e(records: list[dict]) -> None:
    print(
        "\n| family | parameters | method | levers | batch | setup s | train s | total s "
        "| setup peak GiB | train peak GiB | PFLOP setup / train | TFLOP/s setup / train |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in records:
        print(
            f"| {r['family']} | {r['parameters']} | {r['method']} | {_levers(r)} | {r['batch']} | {r['setup_s']} "
            f"| {r['train_s']} | {r['total_s']} | {r['setup_peak_gib']:.1f} | {r['train_peak_gib']:.1f} "
            f"| {r['setup_pflop']:.3g} / {r['train_pflop']:.3g} "
            f"| {r['setup_tflop_per_s']:.3g} / {r['train_tflop_per_s']:.3g} |"
        )


def _levers(r: dict) -> str:
    names = [
        ("frozen copy", r.get("frozen") == "copy"),
        ("ckpt", r.get("checkpointing")),
        ("half", r.get("half_frozen")),
        (f"cap {r.get('memory_cap_gb')} GB", r.get("memory_cap_gb")),
    ]
    return ", ".join(n for n, on in names if on) or "–"


if __name__ == "__main__":
    main()
