"""FID between a model's images and the base model's images on the retain prompts (and against
a folder of real images when given), with torchmetrics' FrechetInceptionDistance.

The feature space is labelled with every number: by default the judge's (for the default model
the shipped classifier's features, not comparable with Inception FID; for real models the
open_clip image encoder), or Inception-v3's 2048-d pool3 with ``--fid-features inception``.
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from eval.images import load_images
from eval.metrics.base import EvalContext, ModelImages, register_metric, value


class _Features(nn.Module):
    """torchmetrics hands us the images we gave it; we give it the extractor's features."""

    def __init__(self, extractor, num_features: int):
        super().__init__()
        self.extractor = extractor
        self.num_features = num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.extractor.features(images).double()


class FrechetReference:
    """One reference image set's feature statistics, extracted once and compared with any number
    of image sets: an evaluation scores every run against the same base (or real) images, and
    their features are most of the work on a large extractor (Inception at 299 px)."""

    def __init__(self, extractor, reference: torch.Tensor):
        self.num_features = extractor.features(reference[:1]).shape[-1]
        # Only the main process scores, so torchmetrics must not wait for the others to sync. (Its
        # `normalize` flag is left out: with a custom feature module it does nothing to the images.)
        self.metric = FrechetInceptionDistance(
            feature=_Features(extractor, self.num_features), reset_real_features=False, sync_on_compute=False
        )
        self.metric.update(reference, real=True)

    def distance(self, images: torch.Tensor) -> float:
        self.metric.reset()  # the generated side only: the reference's sums are kept
        self.metric.update(images, real=False)
        return float(self.metric.compute())


def frechet_distance(extractor, a: torch.Tensor, b: torch.Tensor) -> float:
    """FID between two image batches in [-1, 1] in ``extractor.features``' space."""
    return FrechetReference(extractor, a).distance(b)


def _reference(ctx: EvalContext, images: torch.Tensor) -> FrechetReference:
    """The reference for these very images (cached beside them: same tensor, same statistics)."""
    key = ("fid-reference", id(images))
    cached = ctx.image_cache.get(key)
    if cached is None or cached[0] is not images:
        cached = ctx.image_cache[key] = (images, FrechetReference(ctx.features, images))
    return cached[1]


@register_metric("fid")
def fid_metrics(ctx: EvalContext, model: ModelImages) -> dict[str, dict]:
    extractor = ctx.features
    if extractor is None or extractor.feature_name is None:
        return {}
    rows = ctx.retain_rows
    if len(rows) < 2:
        return {}
    mine = ctx.images(model, rows, extractor.image_size)
    out = {}
    if ctx.base is not None and not model.is_base:
        reference = _reference(ctx, ctx.images(ctx.base, rows, extractor.image_size))
        out["FID_vs_base"] = value(
            reference.distance(mine),
            len(rows),
            f"FID between this model's and the base model's images on the retain prompts, in "
            f"{extractor.feature_name} (same seeds; 0 = identical distributions)"
            f"{_few_images(len(mine), reference.num_features)}",
            features=extractor.feature_name,
        )
    if ctx.real_images:
        key = ("real", extractor.image_size)
        if key not in ctx.image_cache:
            ctx.image_cache[key] = load_images(ctx.real_images, size=extractor.image_size)
        reference = _reference(ctx, ctx.image_cache[key])
        out["FID_vs_real"] = value(
            reference.distance(mine),
            len(rows),
            f"FID between this model's retain-prompt images and the real image folder, in {extractor.feature_name}"
            f"{_few_images(len(mine), reference.num_features)}",
            features=extractor.feature_name,
            real_images=len(ctx.real_images),
        )
    return out


def _few_images(count: int, dimensions: int) -> str:
    """A note for the definition when there are fewer images than feature dimensions: the
    covariance is then rank-deficient and FID is biased upwards, strongly (two samples of one
    distribution in 1024-d: about 1100 at 300 images, 130 at 4000). Such values compare only
    between models scored with the same image count."""
    if count > dimensions:
        return ""
    return (
        f"; {count} images in a {dimensions}-d space: biased upwards, compare only at the same image count "
        "(more images per prompt lower the bias)"
    )
