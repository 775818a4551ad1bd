"""Full-size SD 1.5 / 2.1 / XL on a GPU, with random weights built from the shipped configs.

What it measures, per family (one JSON line after each part; run one family per process for
clean memory figures):
  * generate: seconds per image at the model's native size and peak GPU memory (bf16 pipeline);
  * train: median step time and GPU memory of `erase train`'s steps (fp32 weights, bf16
    autocast, latent bank), per balancing method, interleaved step by step, so `eupmu` (one
    backward) can be compared with `explicit` (two backwards) where it matters: a GPU at small
    batch;
  * single file: the pipeline written in the family's original layout loads back through
    `load_pipeline` with no --model-config, with every socket call refused (no network), and
    the UNet comes back bit-exact.
Random weights make the images noise, which does not change time or memory. Needs a CUDA GPU;
the suite runs only ``--smoke`` (tiny models on the CPU: that the script runs, not its figures).

    python scripts/bench_families_gpu.py --families sd15 sd21 sdxl --out results.jsonl
"""

from __future__ import annotations

import argparse
import gc
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from erase.config import TrainConfig  # noqa: E402
from erase.loop import ErasureRun  # noqa: E402
from pipelines.families import FAMILIES  # noqa: E402
from pipelines.generate import GenerateConfig, generate  # noqa: E402
from pipelines.loading import load_pipeline, shipped_config_folder  # noqa: E402
from pipelines.single_file import save_single_file  # noqa: E402

BY_CONFIG = {family.shipped_config: family for family in FAMILIES.values()}
GIB = 2**30


def random_pipeline(family, device: str, dtype: torch.dtype):
    """The family's standard architecture with random weights, built on ``device``."""
    import diffusers
    import transformers

    folder = shipped_config_folder(family)
    index = json.loads((folder / "model_index.json").read_text())
    parts = {}
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[0] is None:
            continue
        library, cls_name = spec
        cls = getattr(transformers if library == "transformers" else diffusers, cls_name)
        if name.startswith("tokenizer"):
            parts[name] = cls.from_pretrained(folder / name)
        elif name == "scheduler":  # its tables stay on the CPU, as diffusers expects
            parts[name] = cls.from_pretrained(folder, subfolder=name)
        else:
            with torch.device(device):  # random init on the GPU: seconds, not minutes
                if library == "transformers":
                    parts[name] = cls(cls.config_class.from_pretrained(folder / name))
                else:
                    parts[name] = cls.from_config(cls.load_config(folder / name))
    for module in parts.values():
        if isinstance(module, torch.nn.Module):
            module.to(dtype).eval()
    extra = {"requires_safety_checker": False} if "safety_checker" in index else {}
    optional = {n: None for n in ("safety_checker", "feature_extractor", "image_encoder") if n in index}
    return family.pipeline_class(**parts, **optional, **extra)


def peak_gib() -> float | None:
    return round(torch.cuda.max_memory_allocated() / GIB, 2) if torch.cuda.is_available() else None


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def empty_cache() -> None:
    """Free what the last part left: Accelerate's objects hold models in reference cycles."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def tiny_pipeline(family, device: str, dtype: torch.dtype):
    """--smoke: the test suite's tiny pipeline of the family, to check this script on a CPU."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import tiny_models
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from pipelines.tokenizer import build_clip_tokenizer

    folder = Path(tempfile.mkdtemp())
    tok, bang = build_clip_tokenizer(folder / "t"), build_clip_tokenizer(folder / "b", pad_token="!")
    if family.name == "sdxl":
        pipe = StableDiffusionXLPipeline(**tiny_models.sdxl_components(tok, bang))
    else:
        parts = tiny_models.sd2_components(bang) if family.name == "sd2" else tiny_models.sd1_components(tok)
        pipe = StableDiffusionPipeline(**parts)
    return pipe.to(device, dtype)


def bench_generate(pipe, family, work: Path, images: int, steps: int, device: str) -> dict:
    prompts = work / "prompts.csv"
    rows = [f"{i},a photo of a church number {i},{i}" for i in range(images)]
    prompts.write_text("case_number,prompt,evaluation_seed\n" + "\n".join(rows) + "\n")
    config = dict(prompts=str(prompts), model="bench", steps=steps, batch_size=1, progress=False, device=device)
    generate(GenerateConfig(output=str(work / "warm"), **config | {"steps": 2}), pipe=pipe)  # kernels, cudnn
    sync()
    reset_peak()
    start = time.perf_counter()
    generate(GenerateConfig(output=str(work / "images"), **config), pipe=pipe)
    sync()
    seconds = time.perf_counter() - start
    height, width = family.default_size(pipe)
    return {
        "size": f"{height}x{width}",
        "steps": steps,
        "s_per_image": round(seconds / images, 3),
        "peak_gib": peak_gib(),
    }


def allocated_gib() -> float:
    return torch.cuda.memory_allocated() / GIB if torch.cuda.is_available() else 0.0


def bench_train(family, build, work: Path, methods: list[str], steps: int, batch: int, device: str) -> list[dict]:
    """Step time and memory per method, interleaved: one run per method and each round times one
    step of every method in turn, so drift hits all alike. The runs share one pipeline (four
    fp32 SDXL pipelines do not fit on one GPU); each trains it in turn, which does not change
    what a step costs.

    Memory is reported in parts, each measured: the pipeline as loaded, what a run adds to it
    (frozen copy, latent bank, gradients, Adam state; after one step), and the transient peak of
    a step above that. The finished pipelines are not saved (that would time the disk)."""
    retain = work / "retain.txt"
    retain.write_text("a photo of a dog\na photo of a house\n")
    runs, memory = {}, {}
    before = allocated_gib()
    pipe = build(family, device, torch.float32)
    pipeline = round(allocated_gib() - before, 2)
    for method in methods:
        loaded = allocated_gib()
        config = TrainConfig(
            output=str(work / f"run-{method}"),
            concept="a photo of a church",
            retain=str(retain),
            model="bench",
            method=method,
            steps=steps + 1,
            batch_size=batch,
            bank_size=1,
            bank_steps=10,
            mixed_precision="bf16" if device == "cuda" else "no",
            checkpoint_every=10_000,
            progress=False,
        )
        run = ErasureRun(config, pipe)
        run.check_inputs()
        run.setup()
        run.step = 0
        run.train_step()  # first step: kernel selection, Adam state
        sync()
        memory[method] = {"pipeline_gib": pipeline, "run_adds_gib": round(allocated_gib() - loaded, 2)}
        runs[method] = run
    times = {method: [] for method in methods}
    transient = {method: [] for method in methods}
    for step in range(1, steps + 1):
        for method, run in runs.items():
            run.step = step
            sync()
            reset_peak()
            base = allocated_gib()
            start = time.perf_counter()
            run.train_step()
            sync()
            times[method].append(time.perf_counter() - start)
            transient[method].append((peak_gib() or 0.0) - base)
    reference = statistics.median(times[methods[0]])
    return [
        {
            "method": method,
            "batch": batch,
            "median_step_s": round(statistics.median(times[method]), 4),
            f"vs_{methods[0]}": round(statistics.median(times[method]) / reference, 3),
            **memory[method],
            "step_transient_gib": round(max(transient[method]), 2),
        }
        for method in methods
    ]


def bench_single_file(pipe, family, work: Path, shipped: bool = True) -> dict:
    """Write the original layout, then load it with no --model-config while sockets are refused
    (--smoke: with the tiny pipeline's own folder as --model-config)."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[:1])
        raise OSError("network refused by the benchmark")

    path = work / f"{family.shipped_config}.safetensors"
    start = time.perf_counter()
    save_single_file(pipe.to("cpu"), path, layout=family.to_original)
    written = time.perf_counter() - start
    saved = socket.getaddrinfo, socket.socket.connect
    socket.getaddrinfo, socket.socket.connect = refuse, refuse
    try:
        start = time.perf_counter()
        config = None
        if not shipped:
            config = work / "config"
            pipe.save_pretrained(config)
        loaded = load_pipeline(path, device="cpu", dtype="bfloat16", config=config)
        read = time.perf_counter() - start
    finally:
        socket.getaddrinfo, socket.socket.connect = saved
    ours, theirs = pipe.unet.state_dict(), loaded.unet.state_dict()
    exact = ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    size = path.stat().st_size
    path.unlink()
    return {
        "file_gib": round(size / GIB, 2),
        "write_s": round(written, 1),
        "load_s": round(read, 1),
        "class": type(loaded).__name__,
        "unet_bit_exact": exact,
        "network_attempts": len(attempts),
    }


def save(out, record: dict) -> None:
    """One line per finished part, so a later part's failure keeps what was measured."""
    out.write(json.dumps(record) + "\n")
    out.flush()
    print(json.dumps(record), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", default=list(BY_CONFIG), choices=list(BY_CONFIG))
    parser.add_argument("--parts", nargs="+", default=["generate", "train", "single-file"])
    parser.add_argument("--methods", nargs="+", default=["none", "eupmu-fast", "eupmu", "explicit"])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--train-steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--out", default="bench_families.jsonl")
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks this script only")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU (or --smoke to check the script on tiny models)")
    device = "cpu" if args.smoke else "cuda"
    build = tiny_pipeline if args.smoke else random_pipeline
    device_name = "cpu (smoke)" if args.smoke else torch.cuda.get_device_name()
    with open(args.out, "a") as out:
        for name in args.families:
            family = BY_CONFIG[name]
            with tempfile.TemporaryDirectory() as tmp:
                work = Path(tmp)
                record = {"family": name, "gpu": device_name, "torch": torch.__version__}
                if "generate" in args.parts:
                    pipe = build(family, device, torch.bfloat16)
                    record["unet_params_m"] = round(sum(p.numel() for p in pipe.unet.parameters()) / 1e6, 1)
                    record["generate"] = bench_generate(pipe, family, work, args.images, args.sample_steps, device)
                    del pipe
                    empty_cache()
                    save(out, record)
                if "train" in args.parts:
                    record["train"] = bench_train(
                        family, build, work, args.methods, args.train_steps, args.batch, device
                    )
                    save(out, record)
                    empty_cache()
                if "single-file" in args.parts:
                    pipe = build(family, device, torch.bfloat16)
                    record["single_file"] = bench_single_file(pipe, family, work, shipped=not args.smoke)
                    del pipe
                    empty_cache()
                    save(out, record)


if __name__ == "__main__":
    main()
