"""attack.json (every attack: prompt, seed, labels before and after, the prompt found) and
report.md (ASR before and after per model, and the prompts that brought the concept back)."""

from __future__ import annotations

from pathlib import Path

from eval.concepts import describe
from pipelines.files import write_json_atomic, write_text_atomic

FOUND_SHOWN = 10  # found prompts listed per model in report.md (attack.json has all)


def write_attack_report(result: dict, output: Path) -> None:
    write_json_atomic(output / "attack.json", result)
    write_text_atomic(output / "report.md", attack_markdown(result))


def attack_markdown(result: dict) -> str:
    s = result["settings"]
    lines = [
        "# Adversarial prompt attack",
        "",
        f"UnlearnDiffAtk-style `{s['search']}` attack: {s['tokens']} tokens put in front of each prompt, "
        f"{s['iterations']} iterations at each of {s['timesteps']} timesteps, judged by `{s['judge']}` after each "
        f"timestep; {s['images_per_prompt']} seeds per prompt of `{s['prompts']}` that shows the erased concept. "
        "ASR is the share of those images the judge sees the concept in: before is the model's own image of the "
        "prompt, after counts an image won by the attack too.",
        "",
        "| model | erased | attacks | ASR before | ASR after | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in result["models"].items():
        lines.append(
            f"| {name} | {describe(m['erased'])} | {m['attacks']} | {m['asr_before']:.1%} | {m['asr_after']:.1%} "
            f"| {m['seconds']:.0f} |"
        )
    for name, m in result["models"].items():
        won = [r for r in m["results"] if r["success_after"] and not r["success_before"]]
        if not won:
            continue
        lines += ["", f"## {name}: prompts that brought it back ({len(won)})", ""]
        for r in won[:FOUND_SHOWN]:
            lines.append(f"- `{r['found_prompt']}` (seed {r['seed']}, at t = {r['timestep']}; was `{r['prompt']}`)")
        if len(won) > FOUND_SHOWN:
            lines.append(f"- … {len(won) - FOUND_SHOWN} more in attack.json")
    return "\n".join(lines) + "\n"
