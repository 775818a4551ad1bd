"""Reproduce the shipped tiny CLIP (``eval/classifiers/tiny_clip/``) from a seed, offline.

Real CLIP weights mean nothing for the default model's 32×32 digits, so CLIP score and the
``open-clip`` judge had nothing to run on out of the box. This trains an open_clip model of a
custom size contrastively on the default model's training renderings (every digit in every
style) and captions built from its prompts:

- the prompt itself, ``a red drawing of the digit three``;
- the digit alone, ``a drawing of the digit three``;
- the style alone, ``a red drawing``.

A caption that leaves the style (or digit) open matches every image with its digit (or style),
so the loss is CLIP's symmetric cross-entropy with every matching pair of the batch counted as
a positive. One in five load_digits samples is held out; the zero-shot accuracy on them, and on
images the default model generates from its own prompt list, is written into the folder's
``open_clip_config.json`` and printed.

    python scripts/train_tiny_clip.py            # seed 0; a few minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eval.clip_encoder import TINY_CLIP_DIR, WEIGHTS_NAME, load_clip_folder  # noqa: E402
from pipelines.default.render import DIGIT_WORDS, STYLES, held_out_mask, prompt_for, render_all  # noqa: E402
from pipelines.files import atomic_folder  # noqa: E402
from scripts.train_default_model import augment  # noqa: E402 - the default model's judge's augmentation

MODEL_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "patch_size": 4, "width": 96, "layers": 4, "head_width": 32, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
# The default model's images are in [-1, 1]; this maps CLIP's [0, 1] input back to it.
PREPROCESS_CFG = {"size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic"}
TEMPLATES = {"class": "a drawing of the digit {}", "style": "a {} drawing"}


def caption(digit: int | None, style: int | None) -> str:
    if digit is not None and style is not None:
        return prompt_for(STYLES[style], digit)
    if digit is not None:
        return TEMPLATES["class"].format(DIGIT_WORDS[digit])
    return TEMPLATES["style"].format(STYLES[style])


def multi_positive_loss(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric loss where row i may match several columns: −log of the softmax mass
    on the matching ones, averaged over both directions."""
    masked = logits.masked_fill(~positive, float("-inf"))
    image_to_text = torch.logsumexp(logits, 1) - torch.logsumexp(masked, 1)
    text_to_image = torch.logsumexp(logits, 0) - torch.logsumexp(masked, 0)
    return (image_to_text.mean() + text_to_image.mean()) / 2


def train(args: argparse.Namespace):
    import open_clip

    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    data = render_all()
    train_set = data.subset(~held_out_mask(data.source_index))
    model = open_clip.CLIP(**MODEL_CFG)
    tokenize = open_clip.get_tokenizer("ViT-B-32", context_length=MODEL_CFG["text_cfg"]["context_length"])
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}])
    n = len(train_set.digits)
    start = time.perf_counter()
    for step in range(args.steps):
        warm = min(1.0, (step + 1) / 100)
        for group in optimizer.param_groups:
            group["lr"] = args.lr * warm * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        idx = torch.randint(0, n, (args.batch_size,), generator=g)
        digits, styles = train_set.digits[idx], train_set.styles[idx]
        kind = torch.multinomial(torch.tensor([0.5, 0.25, 0.25]), args.batch_size, True, generator=g)
        cap_digit = torch.where(kind == 2, -1, digits)  # -1: left open
        cap_style = torch.where(kind == 1, -1, styles)
        texts = [
            caption(None if d < 0 else d, None if s < 0 else s)
            for d, s in zip(cap_digit.tolist(), cap_style.tolist(), strict=True)
        ]
        positive = ((cap_digit[None] < 0) | (cap_digit[None] == digits[:, None])) & (
            (cap_style[None] < 0) | (cap_style[None] == styles[:, None])
        )
        image = F.normalize(model.encode_image(augment(train_set.images[idx], g, gain=0.3, blur=0.4)), dim=-1)
        text = F.normalize(model.encode_text(tokenize(texts)), dim=-1)
        loss = multi_positive_loss(model.logit_scale.exp().clamp(max=100) * image @ text.T, positive)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if not args.quiet and (step % 200 == 0 or step == args.steps - 1):
            print(
                f"step {step + 1}/{args.steps}: loss {loss.item():.4f} ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    return model.eval(), time.perf_counter() - start


def zero_shot_accuracy(encoder, images: torch.Tensor, digits: list[int], styles: list[int]) -> dict[str, float]:
    from eval.judges import ZeroShotJudge

    judge = ZeroShotJudge(encoder, {"class": list(DIGIT_WORDS), "style": list(STYLES)})
    found = {"class": [], "style": []}
    for first in range(0, len(images), 512):
        for axis, labels in judge.predict(images[first : first + 512]).items():
            found[axis] += labels
    return {
        "class": sum(f == DIGIT_WORDS[d] for f, d in zip(found["class"], digits, strict=True)) / len(digits),
        "style": sum(f == STYLES[s] for f, s in zip(found["style"], styles, strict=True)) / len(styles),
    }


def generated_images(per_prompt: int):
    """The default model's images of its own prompt list, with the prompts' labels."""
    from eval.images import load_images
    from pipelines.generate import GenerateConfig, generate, read_manifest

    with tempfile.TemporaryDirectory() as tmp:
        config = GenerateConfig(prompts="default/digits", output=tmp, images_per_prompt=per_prompt, progress=False)
        generate(config)
        entries = list(read_manifest(Path(tmp)).values())
        images = load_images([Path(tmp) / e["file"] for e in entries])
    digits = [DIGIT_WORDS.index(e["class"]) for e in entries]
    styles = [STYLES.index(e["style"]) for e in entries]
    return images, digits, styles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--generated-per-prompt", type=int, default=5, help="images per prompt for the check")
    parser.add_argument("--output", type=Path, default=TINY_CLIP_DIR)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    import diffusers

    diffusers.utils.logging.disable_progress_bar()  # the check's pipeline load would draw bars
    model, seconds = train(args)
    from safetensors.torch import save_file

    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    record = {
        "model_cfg": MODEL_CFG,
        "preprocess_cfg": PREPROCESS_CFG,
        "concept_erase": {
            "zero_shot_templates": TEMPLATES,
            "trained_by": f"python scripts/train_tiny_clip.py --seed {args.seed} --steps {args.steps} "
            f"--batch-size {args.batch_size} --lr {args.lr}",
            "training_seconds": round(seconds, 1),
        },
    }
    with atomic_folder(args.output) as tmp:
        save_file(state, str(tmp / WEIGHTS_NAME))
        (tmp / "open_clip_config.json").write_text(json.dumps(record, indent=2) + "\n")
    encoder = load_clip_folder(args.output)  # measured as shipped: fp16 weights, read back
    data = render_all()
    held = data.subset(held_out_mask(data.source_index))
    on_held = zero_shot_accuracy(encoder, held.images, held.digits.tolist(), held.styles.tolist())
    accuracy = {"held_out_renderings": on_held | {"n": len(held.digits)}}
    images, digits, styles = generated_images(args.generated_per_prompt)
    accuracy["default_model_images"] = zero_shot_accuracy(encoder, images, digits, styles) | {"n": len(digits)}
    record["concept_erase"]["zero_shot_accuracy"] = accuracy
    (args.output / "open_clip_config.json").write_text(json.dumps(record, indent=2) + "\n")
    size = (args.output / WEIGHTS_NAME).stat().st_size / 1e6
    print(f"tiny CLIP → {args.output} ({size:.1f} MB, {seconds:.0f} s of training)")
    for name, acc in accuracy.items():
        print(f"  zero-shot on {name} (n={acc['n']}): digit {acc['class']:.1%}, style {acc['style']:.1%}")


if __name__ == "__main__":
    main()
