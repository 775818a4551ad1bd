"""Reproduce the embedded default model and its classifier from a seed, offline.

Stages (each can be run alone with ``--stages``):
  1. classifier  digit + style CNN on the renderings          → eval/classifiers/digit_style/
  2. vae         AutoencoderKL, 32×32×3 ↔ 8×8×4                → <work-dir>/vae/
  3. unet        UNet2DConditionModel + CLIPTextModel, ε-prediction with prompt dropout,
                 then the pipeline folder is assembled         → pipelines/default/model/

Measured on 2 CPU cores (see README "The embedded default model" for the latest figures):
    python scripts/train_default_model.py          # all three stages, seed 0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffusers import AutoencoderKL, StableDiffusionPipeline  # noqa: E402
from diffusers.optimization import get_cosine_schedule_with_warmup  # noqa: E402
from diffusers.training_utils import EMAModel  # noqa: E402

from eval.classifiers.digit_style import DigitStyleClassifier  # noqa: E402
from pipelines.default import architecture  # noqa: E402
from pipelines.default.render import STYLES, held_out_mask, render_all  # noqa: E402
from pipelines.files import atomic_folder, write_json_atomic  # noqa: E402
from pipelines.tokenizer import build_clip_tokenizer, write_clip_tokenizer_files  # noqa: E402

DEFAULT_MODEL_DIR = ROOT / "pipelines" / "default" / "model"
DEFAULT_CLASSIFIER_DIR = ROOT / "eval" / "classifiers" / "digit_style"


def augment(images: torch.Tensor, generator: torch.Generator, gain: float = 0.2, blur: float = 0.3) -> torch.Tensor:
    """Shifts of up to 2 px, contrast jitter (±gain/2), noise and, with probability ``blur``, a
    3×3 blur: so a judge trained on renderings tolerates the softer, less centred generated
    images. (The tiny CLIP's script calls this with more jitter and blur.)"""
    b = images.shape[0]
    padded = F.pad(images, (2, 2, 2, 2), mode="replicate")
    dx, dy = torch.randint(0, 5, (2,), generator=generator).tolist()
    shifted = padded[:, :, dy : dy + 32, dx : dx + 32]
    scale = 1.0 + gain * (torch.rand(b, 1, 1, 1, generator=generator) - 0.5)
    noise = 0.1 * torch.rand(b, 1, 1, 1, generator=generator) * torch.randn(shifted.shape, generator=generator)
    blurs = torch.rand(b, 1, 1, 1, generator=generator) < blur
    blurred = F.avg_pool2d(F.pad(shifted, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    out = torch.where(blurs, blurred, shifted)
    return (out * scale + noise).clamp(-1.0, 1.0)


def train_classifier(args: argparse.Namespace) -> dict:
    data = render_all()
    held = held_out_mask(data.source_index)
    train, test = data.subset(~held), data.subset(held)
    g = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    model = DigitStyleClassifier(list(STYLES))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = get_cosine_schedule_with_warmup(opt, 50, args.classifier_steps)
    for _ in tqdm(range(args.classifier_steps), desc="classifier", disable=args.quiet):
        idx = torch.randint(0, len(train.digits), (64,), generator=g)
        digit_logits, style_logits = model(augment(train.images[idx], g))
        loss = F.cross_entropy(digit_logits, train.digits[idx]) + F.cross_entropy(style_logits, train.styles[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        digit_logits, style_logits = model(test.images)
    report = {
        "held_out_images": len(test.digits),
        "held_out_digit_accuracy": (digit_logits.argmax(1) == test.digits).float().mean().item(),
        "held_out_style_accuracy": (style_logits.argmax(1) == test.styles).float().mean().item(),
        "seed": args.seed,
        "steps": args.classifier_steps,
        "held_out_rule": "load_digits rows whose index is divisible by 5",
    }
    model.save(args.classifier_dir, metadata=report)
    return report


def train_vae(args: argparse.Namespace) -> dict:
    data = render_all()
    g = torch.Generator().manual_seed(args.seed + 1)
    torch.manual_seed(args.seed + 1)
    dev = torch.device(args.device)
    vae = AutoencoderKL(**architecture.vae_config()).to(dev)
    images = data.images.to(dev)
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    sched = get_cosine_schedule_with_warmup(opt, 50, args.vae_steps)
    bar = tqdm(range(args.vae_steps), desc="vae", disable=args.quiet)
    for step in bar:
        idx = torch.randint(0, len(data.digits), (args.vae_batch_size,), generator=g)
        x = images[idx.to(dev)]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=g)).sample
        loss = F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x) + 1e-6 * posterior.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    vae = vae.cpu().eval()
    with torch.no_grad():
        means = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in data.images.split(512)])
        recon = torch.cat([vae.decode(m).sample for m in means.split(512)])
    scaling = 1.0 / means.std().item()
    vae.register_to_config(scaling_factor=round(scaling, 5))
    report = {"reconstruction_mse": F.mse_loss(recon, data.images).item(), "scaling_factor": round(scaling, 5)}
    with atomic_folder(args.work_dir / "vae", overwrite=True) as tmp:
        vae.save_pretrained(tmp, safe_serialization=True)
    return report


def train_unet(args: argparse.Namespace) -> dict:
    data = render_all()
    vae = AutoencoderKL.from_pretrained(args.work_dir / "vae").eval()
    with torch.no_grad():
        dists = [vae.encode(chunk).latent_dist for chunk in data.images.split(512)]
    lat_mean = torch.cat([d.mean for d in dists]) * vae.config.scaling_factor  # (N, 4, 8, 8)
    lat_std = torch.cat([d.std for d in dists]) * vae.config.scaling_factor

    tokenizer = build_clip_tokenizer(args.work_dir / "tokenizer")
    prompts = data.prompts
    unique = sorted(set(prompts)) + [""]  # the last one is the unconditional prompt
    prompt_index = torch.tensor([unique.index(p) for p in prompts])
    null_index = len(unique) - 1
    ids = tokenizer(unique, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids

    dev = torch.device(args.device)
    lat_mean, lat_std, ids = lat_mean.to(dev), lat_std.to(dev), ids.to(dev)
    _, unet, text_encoder = architecture.build_untrained(args.seed + 2)
    unet, text_encoder = unet.to(dev), text_encoder.to(dev)
    noise_scheduler = architecture.training_scheduler()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    ema = EMAModel(params, decay=args.ema_decay)
    opt = torch.optim.AdamW(params, lr=args.unet_lr, weight_decay=0.0)
    sched = get_cosine_schedule_with_warmup(opt, 100, args.unet_steps)
    g = torch.Generator().manual_seed(args.seed + 3)
    alphas = noise_scheduler.alphas_cumprod.to(dev)
    bar = tqdm(range(args.unet_steps), desc="unet", disable=args.quiet)
    for step in bar:
        # Draw on the CPU generator so a seed gives the same batches on any device.
        idx = torch.randint(0, len(prompt_index), (args.batch_size,), generator=g)
        eps_latent = torch.randn(args.batch_size, *lat_mean.shape[1:], generator=g).to(dev)
        x0 = lat_mean[idx] + lat_std[idx] * eps_latent  # (B, 4, 8, 8)
        drop = torch.rand(args.batch_size, generator=g) < args.prompt_dropout
        which = torch.where(drop, null_index, prompt_index[idx]).to(dev)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (args.batch_size,), generator=g).to(dev)
        noise = torch.randn(x0.shape, generator=g).to(dev)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        # Encode each distinct prompt once per step, then gather: (P, 77, 32) → (B, 77, 32).
        states = text_encoder(ids).last_hidden_state[which]
        loss = F.mse_loss(unet(xt, t, states).sample, noise)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema.step(params)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    ema.copy_to(params)

    unet, text_encoder = unet.cpu(), text_encoder.cpu()
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=architecture.sampling_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    with atomic_folder(args.model_dir, overwrite=True) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        # transformers 5 saves only tokenizer.json; older releases' CLIPTokenizer needs these two.
        write_clip_tokenizer_files(tmp / "tokenizer", config=False)
    return {"final_loss": loss.item(), "steps": args.unet_steps, "batch_size": args.batch_size}


STAGES = {"classifier": train_classifier, "vae": train_vae, "unet": train_unet}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", default="classifier,vae,unet", help="comma-separated subset of: " + ", ".join(STAGES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="where the pipeline folder goes")
    p.add_argument("--classifier-dir", type=Path, default=DEFAULT_CLASSIFIER_DIR)
    p.add_argument("--work-dir", type=Path, default=ROOT / ".cache" / "default-model", help="intermediate VAE")
    p.add_argument("--classifier-steps", type=int, default=1000)
    p.add_argument("--vae-steps", type=int, default=1500)
    p.add_argument("--vae-batch-size", type=int, default=32)
    p.add_argument("--unet-steps", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--unet-lr", type=float, default=1e-3)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--prompt-dropout", type=float, default=0.1)
    p.add_argument("--device", default="cpu", help="device for the vae and unet stages (cpu, cuda)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in args.stages if s not in STAGES]
    if unknown:
        p.error(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    summary = {"seed": args.seed, "torch_threads": torch.get_num_threads(), "stages": {}}
    for name in args.stages:
        start = time.perf_counter()
        report = STAGES[name](args)
        report["seconds"] = round(time.perf_counter() - start, 1)
        summary["stages"][name] = report
        print(f"[{name}] " + json.dumps(report), flush=True)
    summary["total_seconds"] = round(sum(s["seconds"] for s in summary["stages"].values()), 1)
    write_json_atomic(args.work_dir / "training_summary.json", summary)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
