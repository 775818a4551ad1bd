"""Kill soak: SIGKILL `erase train` / `erase generate` / `erase eval` at random points, restart
each time, and check that nothing is lost or corrupt and that the end result is bit-identical
to an uninterrupted run of the same seed.

    python scripts/soak_kill.py train --kills 10        # the default model, 200 steps
    python scripts/soak_kill.py generate --kills 10     # 400 images of the digit list
    python scripts/soak_kill.py eval --kills 10         # a run's eval, report values compared

After every kill the output folder is scanned: each .safetensors must open and read whole,
each .json/.jsonl must parse, each .png must decode. Leftover temporary files (``.*.tmp``) are
counted apart: they are not corrupt outputs, and the restarted command removes them. Kill
points come from --seed: most at a random step (train) or image count (generate, eval), some
at a random time during start-up; each is printed so a failure can be replayed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def erase_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "erase", *args]


def run_until(argv: list[str], should_kill: Callable[[float], bool], log: Path, timeout: float = 1800) -> str:
    """Run ``argv``; SIGKILL it as soon as ``should_kill(seconds since start)`` says so.
    Returns "killed" or "finished" (raises if the command failed on its own)."""
    with open(log, "ab") as sink:
        proc = subprocess.Popen(argv, stdout=sink, stderr=sink, cwd=ROOT)
        start = time.monotonic()
        while proc.poll() is None:
            elapsed = time.monotonic() - start
            if should_kill(elapsed):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return "killed"
            if elapsed > timeout:
                proc.kill()
                raise TimeoutError(f"{argv} ran past {timeout} s")
            time.sleep(0.01)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}; see {log}")
    return "finished"


def scan(folder: Path) -> dict[str, list[str]]:
    """Files that do not read back whole (``corrupt``) and temp files left by a kill (``temp``)."""
    from PIL import Image
    from safetensors import safe_open

    corrupt, temp = [], []
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        if path.name.endswith(".tmp") or ".tmp" in path.parent.name:
            temp.append(str(path))
            continue
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), "pt") as handle:
                    for key in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
                        handle.get_tensor(key)
            elif path.suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))
            elif path.suffix == ".jsonl":
                for line in path.read_text(encoding="utf-8").splitlines():
                    json.loads(line)
            elif path.suffix == ".png":
                with Image.open(path) as image:
                    image.load()
        except Exception as err:  # any failure to read back is what we count
            corrupt.append(f"{path} ({type(err).__name__}: {str(err)[:80]})")
    return {"corrupt": corrupt, "temp": temp}


def _lines(path: Path) -> int:
    """Lines in a log or manifest the killed command is writing (0 while it does not exist):
    the progress the kill plan waits for."""
    try:
        return len(path.read_bytes().splitlines()) if path.is_file() else 0
    except OSError:
        return 0


def _kill_plan(rng: random.Random, kills: int, total: int) -> list[tuple[str, float]]:
    """Every fourth kill lands a random 0.5–6 s after launch (start-up: imports, model loading,
    the latent bank); the others at distinct random counts of steps or images, in rising order.

    Counts stay out of the last quarter of the work: the poll that sees a count runs every
    10 ms, and a count one step before the end could be passed by a command that finishes
    between two polls (a kill that never happens). A quarter of the steps plus the final save is
    hundreds of polls away even for the tiny test model."""
    timed = {i for i in range(kills) if i % 4 == 3}
    counts = iter(sorted(rng.sample(range(1, max(2, total - total // 4)), kills - len(timed))))
    return [
        ("time", round(rng.uniform(0.5, 6.0), 2)) if i in timed else ("progress", next(counts)) for i in range(kills)
    ]


def _soak(
    command: Callable[[bool], list[str]],
    output: Path,
    progress: Callable[[], int],
    total: int,
    kills: int,
    seed: int,
    log: Path,
    verbose: bool = True,
) -> dict:
    """Run ``command(restart)`` under the kill plan until it finishes; scan after each kill."""
    start = time.perf_counter()
    rng = random.Random(seed)
    plan = _kill_plan(rng, kills, total)
    summary = {"kills": 0, "corrupt": [], "temp_left_after_kills": 0, "plan": plan}
    restart = False
    for kind, value in plan:
        if kind == "time":

            def should_kill(elapsed, value=value):
                return elapsed >= value
        else:

            def should_kill(elapsed, value=value):
                return progress() >= value

        outcome = run_until(command(restart), should_kill, log)
        if outcome == "finished":  # a kill point past the end; the remaining ones are moot
            break
        summary["kills"] += 1
        found = scan(output)
        summary["corrupt"] += found["corrupt"]
        summary["temp_left_after_kills"] += len(found["temp"])
        if verbose:
            print(
                f"  kill {summary['kills']:2d} at {kind} {value}: progress {progress()}/{total}, "
                f"corrupt {len(found['corrupt'])}, temp files {len(found['temp'])}",
                flush=True,
            )
        restart = True
    else:
        run_until(command(restart), lambda _: False, log)
    final = scan(output)
    summary["corrupt"] += final["corrupt"]
    summary["temp_left_at_end"] = len(final["temp"])
    summary["seconds"] = round(time.perf_counter() - start, 1)
    return summary


def _run_reference(workdir: Path, common: list[str]) -> tuple[Path, Path, Path, float]:
    """Empty ``reference/`` and ``killed/`` under ``workdir`` and run ``common`` uninterrupted
    into ``reference/``. Returns (reference, killed, log file, the reference's seconds)."""
    workdir.mkdir(parents=True, exist_ok=True)
    reference, killed, log = workdir / "reference", workdir / "killed", workdir / "soak.log"
    for folder in (reference, killed):
        shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    run_until(erase_command(*common, "--output", str(reference)), lambda _: False, log)
    return reference, killed, log, round(time.perf_counter() - start, 1)


# --- train --------------------------------------------------------------------------------------


def soak_train(workdir: Path, train_args: list[str], steps: int, kills: int, seed: int, verbose: bool = True) -> dict:
    """Train once uninterrupted and once under kills; compare weights and the whole log (λ)."""
    import torch
    from safetensors.torch import load_file

    common = ["train", *train_args, "--steps", str(steps), "--seed", str(seed), "--no-progress"]
    reference, killed, log, reference_seconds = _run_reference(workdir, common)

    def command(restart: bool) -> list[str]:
        # Resume only once the run has recorded its settings; a kill before that left nothing.
        resume = restart and (killed / "train_config.json").is_file()
        return erase_command(*common, "--output", str(killed), *(["--resume"] if resume else ["--overwrite"]))

    summary = _soak(command, killed, lambda: _lines(killed / "train_log.jsonl"), steps, kills, seed, log, verbose)
    summary["reference_seconds"] = reference_seconds

    name = "unet/diffusion_pytorch_model.safetensors"
    a, b = load_file(str(reference / name)), load_file(str(killed / name))
    summary["weights_identical"] = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def entries(run: Path) -> list[dict]:
        rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    log_a, log_b = entries(reference), entries(killed)
    summary["log_identical"] = log_a == log_b
    summary["final_lambda"] = (log_a[-1].get("lambda"), log_b[-1].get("lambda"))
    summary["steps_logged"] = len(log_b)
    return summary


# --- generate -----------------------------------------------------------------------------------


def soak_generate(
    workdir: Path, generate_args: list[str], total: int, kills: int, seed: int, verbose: bool = True
) -> dict:
    """Generate once uninterrupted and once under kills; compare every image's pixels and the
    manifest (no duplicates, no holes, same order)."""
    import numpy as np
    from PIL import Image

    common = ["generate", *generate_args, "--no-progress"]
    reference, killed, log, _ = _run_reference(workdir, common)
    summary = _soak(
        lambda restart: erase_command(*common, "--output", str(killed)),
        killed,
        lambda: _lines(killed / "manifest.jsonl"),
        total,
        kills,
        seed,
        log,
        verbose,
    )
    files_a = [json.loads(x)["file"] for x in (reference / "manifest.jsonl").read_text().splitlines()]
    files_b = [json.loads(x)["file"] for x in (killed / "manifest.jsonl").read_text().splitlines()]
    summary["manifest_identical"] = files_a == files_b
    summary["manifest_duplicates"] = len(files_b) - len(set(files_b))
    summary["images"] = len(files_b)
    summary["images_identical"] = files_a == files_b and all(
        np.array_equal(np.asarray(Image.open(reference / f)), np.asarray(Image.open(killed / f))) for f in files_a
    )
    return summary


# --- eval ---------------------------------------------------------------------------------------


def soak_eval(workdir: Path, eval_args: list[str], total: int, kills: int, seed: int, verbose: bool = True) -> dict:
    """Evaluate once uninterrupted and once under kills; compare every value in metrics.json."""
    common = ["eval", *eval_args, "--no-progress"]
    reference, killed, log, _ = _run_reference(workdir, common)

    def images() -> int:
        return (
            sum(_lines(folder / "manifest.jsonl") for folder in (killed / "images").glob("*"))
            if (killed / "images").is_dir()
            else 0
        )

    summary = _soak(
        lambda restart: erase_command(*common, "--output", str(killed)),
        killed,
        images,
        total,
        kills,
        seed,
        log,
        verbose,
    )

    def values(folder: Path) -> dict:
        data = json.loads((folder / "metrics.json").read_text())
        return {
            (run, side, name): value["value"]
            for run, entry in data["runs"].items()
            for side in ("base", "erased_model")
            for name, value in entry[side].items()
        }

    summary["metrics_identical"] = values(reference) == values(killed)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["train", "generate", "eval"])
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="seed of the kill plan and of the run")
    p.add_argument("--steps", type=int, default=200, help="train: optimisation steps")
    p.add_argument("--workdir", default=str(ROOT / ".cache" / "soak"))
    args = p.parse_args(argv)
    workdir = Path(args.workdir) / args.command
    workdir.mkdir(parents=True, exist_ok=True)
    torch_threads = os.environ.get("OMP_NUM_THREADS", "all")
    print(f"soak {args.command}: {args.kills} kills, seed {args.seed}, threads {torch_threads}", flush=True)
    if args.command == "train":
        summary = soak_train(
            workdir,
            ["--forget", "default/classes/three-forget", "--checkpoint-every", "10"],
            args.steps,
            args.kills,
            args.seed,
        )
        ok = summary["weights_identical"] and summary["log_identical"]
    elif args.command == "generate":
        summary = soak_generate(
            workdir,
            ["--prompts", "default/digits", "--images-per-prompt", "10", "--device", "cpu"],
            400,
            args.kills,
            args.seed,
        )
        ok = summary["images_identical"] and summary["manifest_identical"]
    else:
        run = workdir.parent / "eval-run"
        if not (run / "model_index.json").is_file():
            run_until(
                erase_command(
                    "train",
                    "--forget",
                    "default/classes/three-forget",
                    "--output",
                    str(run),
                    "--overwrite",
                    "--no-progress",
                ),
                lambda _: False,
                workdir.parent / "eval-run.log",
            )
        summary = soak_eval(
            workdir, [str(run), "--images-per-prompt", "4", "--device", "cpu"], 320, args.kills, args.seed
        )
        ok = summary["metrics_identical"]
    ok = ok and not summary["corrupt"] and summary["temp_left_at_end"] == 0
    print(json.dumps({k: v for k, v in summary.items() if k != "plan"}, indent=2))
    print(f"kill plan (seed {args.seed}): {summary['plan']}")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
