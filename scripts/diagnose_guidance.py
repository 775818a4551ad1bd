"""Which half of classifier-free guidance did an erasure break? Draw a style's (or digit's)
prompts on the default model with the run's UNet, then again with one of guidance's two
predictions taken from the base model instead, and let the shipped classifier judge.

    python scripts/diagnose_guidance.py RUN --style red
    python scripts/diagnose_guidance.py RUN --digit seven --images-per-prompt 8

Guidance draws with ε(∅) + s·(ε(c) − ε(∅)): the prompt's prediction ε(c) and the unconditional
one ε(∅). A retain loss that holds only ε(c) on the retain prompts leaves ε(∅) free, and ε(∅) is
in every image. If the concept comes back whole with the base's ε(∅), the erasure broke it
through ε(∅) (what `erase train --retain-unconditional` holds); if it comes back with the base's
ε(c), through the prompt's own prediction. Rows: recognition of the asked digit and style, per
mode, over the same seeds (the eval's settings: DDIM 20 steps, guidance 5).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eval.images import images_to_tensor  # noqa: E402
from eval.judges import DigitStyleJudge  # noqa: E402
from pipelines.default.render import DIGIT_WORDS, STYLES  # noqa: E402
from pipelines.generate import native_size  # noqa: E402
from pipelines.loading import load_pipeline  # noqa: E402

MODES = {  # which rows of the guided batch ([∅ rows, prompt rows]) the base model predicts
    "run as it is": None,
    "base's ε(∅)": "unconditional",
    "base's ε(c)": "conditional",
}


class MixedGuidance(torch.nn.Module):
    """The run's UNet, with the unconditional or the conditional half of each guided batch
    predicted by the base UNet instead (the pipeline stacks ∅ rows first)."""

    def __init__(self, run_unet, base_unet, half: str | None):
        super().__init__()
        self.run_unet, self.base_unet, self.half = run_unet, base_unet, half
        self.config, self.dtype, self.device = run_unet.config, run_unet.dtype, run_unet.device

    def forward(self, sample, timestep, encoder_hidden_states=None, return_dict=True, **kwargs):
        out = self.run_unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, **kwargs).sample
        if self.half is not None:
            rows = slice(0, len(sample) // 2) if self.half == "unconditional" else slice(len(sample) // 2, None)
            base = self.base_unet(sample[rows], timestep, encoder_hidden_states=encoder_hidden_states[rows], **kwargs)
            out = out.clone()
            out[rows] = base.sample
        return (out,)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="an `erase train` run folder of the default model")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--style", choices=STYLES, help="draw every digit in this style")
    which.add_argument("--digit", choices=DIGIT_WORDS, help="draw this digit in every style")
    p.add_argument("--images-per-prompt", type=int, default=4)
    p.add_argument("--base", default="default")
    args = p.parse_args(argv)

    pairs = [(d, args.style) for d in DIGIT_WORDS] if args.style else [(args.digit, s) for s in STYLES]
    pairs = [pair for pair in pairs for _ in range(args.images_per_prompt)]
    prompts = [f"a {style} drawing of the digit {digit}" for digit, style in pairs]
    base_unet = load_pipeline(args.base, device="cpu").unet
    pipe = load_pipeline(args.run, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    run_unet, judge = pipe.unet, DigitStyleJudge()
    height, width = native_size(pipe)
    results = {}
    for mode, half in MODES.items():
        pipe.unet = MixedGuidance(run_unet, base_unet, half)
        with torch.no_grad():
            images = pipe(
                prompt=prompts,
                num_inference_steps=20,
                guidance_scale=5.0,
                height=height,
                width=width,
                generator=[torch.Generator("cpu").manual_seed(1000 + i) for i in range(len(prompts))],
            ).images
        seen = judge.predict(images_to_tensor(images, judge.image_size))
        results[mode] = {
            "digit": sum(g == d for g, (d, _) in zip(seen["class"], pairs, strict=True)) / len(pairs),
            "style": sum(g == s for g, (_, s) in zip(seen["style"], pairs, strict=True)) / len(pairs),
        }
    print(f"{Path(args.run).name}: {len(prompts)} images of {args.style or args.digit}, recognised as asked")
    print("| guidance | digit | style |\n|---|---|---|")
    for mode, row in results.items():
        print(f"| {mode} | {row['digit']:.1%} | {row['style']:.1%} |")
    return results


if __name__ == "__main__":
    main()
