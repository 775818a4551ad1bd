"""Step cost of each balancer (± the feasible mask) and of the x_t sources, measured
interleaved in one process and reported as ratios to `weighted`.

    python scripts/bench_step_cost.py                      # default model, CPU
    python scripts/bench_step_cost.py --repeats 50 --device cuda
    python scripts/bench_step_cost.py --variants eupmu-fast "eupmu-fast, x_t on frozen paths"
    python scripts/bench_step_cost.py --forwards           # what each UNet call of a step costs

Every variant is an `ErasureRun` with the same seed, so step k of every variant draws the same
batch. Each round times one step of every variant in turn (the order rotates each round), so
drift in machine speed hits all variants alike; we report the median over rounds. Peak memory
per step is measured too: on CUDA with torch's peak-allocation counter; on CPU as the rise of
the process's peak resident memory (VmHWM, reset before each step after returning freed heap
memory to the system), which also counts allocator overhead, so read it as approximate.
Writes <output>/step_cost.json and step_cost.md.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from erase.config import TrainConfig  # noqa: E402
from erase.loop import ErasureRun  # noqa: E402
from pipelines.files import write_json_atomic, write_text_atomic  # noqa: E402

METHODS = ["none", "weighted", "eupmu", "eupmu-fast", "explicit"]


def variants() -> dict[str, dict]:
    """Every variant but "one trained call" runs the forget and retain halves as two calls of the
    trained UNet (--no-joint-forward), as the default did until 2026-11-26: the README's table,
    measured then, stays what this prints."""
    out = {m: {"method": m} for m in METHODS}
    out |= {f"{m} + mask": {"method": m, "mask": "feasible"} for m in METHODS}
    out["weighted, x_t by sampling"] = {"method": "weighted", "x_source": "sample"}
    for m in ("weighted", "eupmu-fast"):  # the frozen targets recorded with the points: no frozen forward
        out[f"{m}, x_t on frozen paths"] = {"method": m, "x_source": "trajectory"}
    for m in ("weighted", "eupmu-fast"):  # forget and retain through the trained UNet as one call
        out[f"{m}, one trained call"] = {"method": m, "joint_forward": True}
    out["weighted, frozen calls apart"] = {"method": "weighted", APART: True}
    return {name: {"joint_forward": False} | settings for name, settings in out.items()}


APART = "frozen_calls_apart"  # a variant's key (not a TrainConfig field): the frozen targets called one by one


def frozen_calls_one_by_one(run: ErasureRun):
    """``run``'s frozen targets called once each, as the loop did before it joined a step's frozen
    targets into one call: the comparison point for that change (a stand-in for
    ``run._frozen_epsilons``)."""
    joined = ErasureRun._frozen_epsilons

    def one_by_one(requests):
        return [joined(run, [request])[0] for request in requests]

    return one_by_one


def frozen_calls_apart(run: ErasureRun) -> None:
    run._frozen_epsilons = frozen_calls_one_by_one(run)


class PeakMemory:
    """Peak extra memory of one call, in MiB."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.libc = None if self.cuda else ctypes.CDLL("libc.so.6")

    @staticmethod
    def _status(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])  # kB
        raise RuntimeError(f"{key} not in /proc/self/status")

    def __call__(self, fn) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            fn()
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - before) / 2**20
        self.libc.malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = self._status("VmRSS:")
        fn()
        return (self._status("VmHWM:") - before) / 1024


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--device", default="cpu")
    p.add_argument("--forget", default="default/classes/three-forget")
    p.add_argument("--retain", default=None)
    p.add_argument("--batch-size", type=int, default=TrainConfig(output="", concept="x").batch_size)
    p.add_argument("--repeats", type=int, default=20, help="timed rounds (one step of every variant each)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--output", default=str(ROOT / ".cache" / "bench"))
    p.add_argument(
        "--variants", nargs="+", default=None, metavar="NAME", help="only these rows (weighted is always timed)"
    )
    p.add_argument(
        "--forwards",
        action="store_true",
        help="instead: what one UNet call of a step costs (frozen forward, trainable forward, forward + backward)",
    )
    args = p.parse_args(argv)
    if args.forwards:
        return forward_costs(args)
    chosen = variants()
    if args.variants:
        unknown = [v for v in args.variants if v not in chosen]
        if unknown:
            p.error(f"unknown variant(s) {', '.join(map(repr, unknown))}; choose from {', '.join(map(repr, chosen))}")
        chosen = {n: o for n, o in chosen.items() if n == "weighted" or n in args.variants}

    out = Path(args.output)
    runs: dict[str, ErasureRun] = {}
    for name, overrides in chosen.items():
        config = TrainConfig(
            output=str(out / "runs" / name.replace(" ", "").replace(",", "-")),
            model=args.model,
            forget=args.forget,
            retain=args.retain,
            batch_size=args.batch_size,
            steps=10**6,
            overwrite=True,
            progress=False,
            **{k: v for k, v in overrides.items() if k != APART},
        )
        run = ErasureRun(config)
        run.setup()
        if overrides.get(APART):
            frozen_calls_apart(run)
        run.step = 0
        runs[name] = run
    device = next(iter(runs.values())).accelerator.device
    measure = PeakMemory(device)

    def step(run: ErasureRun) -> None:
        run.train_step()
        run.step += 1

    for _ in range(args.warmup):
        for run in runs.values():
            step(run)
    times: dict[str, list[float]] = {n: [] for n in runs}
    memory: dict[str, list[float]] = {n: [] for n in runs}
    names = list(runs)
    for r in range(args.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            run = runs[name]
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step(run)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
        for name in names:  # memory in a separate pass, so the probes do not slow the timing
            memory[name].append(measure(lambda run=runs[name]: step(run)))

    ref_t = statistics.median(times["weighted"])
    ref_m = statistics.median(memory["weighted"])
    rows = []
    for name in names:
        t, m = statistics.median(times[name]), statistics.median(memory[name])
        rows.append(
            {
                "variant": name,
                "median_step_ms": round(1000 * t, 1),
                "time_vs_weighted": round(t / ref_t, 3),
                "peak_extra_mib": round(m, 1),
                "memory_vs_weighted": round(m / ref_m, 3) if ref_m > 0 else None,
            }
        )
    lines = [
        f"device: {device}, model: {args.model}, batch {args.batch_size} forget + {args.batch_size} retain, "
        f"{args.repeats} interleaved rounds (medians)",
        "",
        "| variant | step (ms) | time ÷ weighted | peak extra memory (MiB) | memory ÷ weighted |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        mem_ratio = "–" if row["memory_vs_weighted"] is None else f"{row['memory_vs_weighted']:.2f}"
        lines.append(
            f"| {row['variant']} | {row['median_step_ms']:.1f} | {row['time_vs_weighted']:.2f} | "
            f"{row['peak_extra_mib']:.1f} | {mem_ratio} |"
        )
    table = "\n".join(lines)
    print(table)
    result = {"device": str(device), "model": args.model, "batch_size": args.batch_size, "rows": rows}
    write_json_atomic(out / "step_cost.json", result)
    write_text_atomic(out / "step_cost.md", table + "\n")
    return result


def forward_costs(args) -> dict:
    """The UNet calls a step is made of, each timed on the same drawn forget batch in rotating
    order over ``--repeats`` rounds (medians): a frozen forward (the originals swapped in, no
    grad), the trainable UNet's forward without and with grad, and a forward with its backward."""
    config = TrainConfig(
        output=str(Path(args.output) / "runs" / "forwards"),
        model=args.model,
        forget=args.forget,
        retain=args.retain,
        batch_size=args.batch_size,
        overwrite=True,
        progress=False,
    )
    run = ErasureRun(config)
    run.setup()
    draw = run._draw("forget", args.batch_size)
    sync = torch.cuda.synchronize if run.accelerator.device.type == "cuda" else (lambda: None)

    def trainable_no_grad():
        with torch.no_grad():
            run._epsilon(run.unet, draw)

    def forward_backward():
        run._epsilon(run.unet, draw).square().mean().backward()
        run.optimizer.zero_grad(set_to_none=True)

    calls = {
        "frozen forward": lambda: run._frozen_epsilon(draw),
        "trainable forward, no grad": trainable_no_grad,
        "trainable forward, grad": lambda: run._epsilon(run.unet, draw),
        "forward + backward": forward_backward,
    }
    times: dict[str, list[float]] = {n: [] for n in calls}
    names = list(calls)
    for r in range(args.warmup + args.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            sync()
            start = time.perf_counter()
            calls[name]()
            sync()
            if r >= args.warmup:
                times[name].append(time.perf_counter() - start)
    ref = statistics.median(times["trainable forward, no grad"])
    lines = [
        f"device: {run.accelerator.device}, model: {args.model}, batch {args.batch_size}, "
        f"{args.repeats} interleaved rounds (medians)",
        "",
        "| UNet call | ms | ÷ trainable forward, no grad |",
        "|---|---|---|",
    ]
    rows = []
    for name in names:
        median = statistics.median(times[name])
        rows.append({"call": name, "median_ms": round(1000 * median, 1), "ratio": round(median / ref, 3)})
        lines.append(f"| {name} | {1000 * median:.1f} | {median / ref:.2f} |")
    table = "\n".join(lines)
    print(table)
    write_text_atomic(Path(args.output) / "forward_cost.md", table + "\n")
    return {"rows": rows}


if __name__ == "__main__":
    main()
