"""Where a training step's x_t comes from (``--x-source``): one module per source, registered here.

Each source is built with the pipeline, its family, the prompts and their conditioning, and the
run's config, and offers ``draw(kind, batch, generator, denoise) -> Draw``.
"""

from __future__ import annotations

from erase.xt_sources.bank import LatentBank
from erase.xt_sources.base import Denoiser, Draw
from erase.xt_sources.sample_to_t import SampleToT


def _bank(pipe, family, prompts, conditions, config, progress):
    return LatentBank(pipe, prompts, conditions, config, progress)


def _sample(pipe, family, prompts, conditions, config, progress):
    return SampleToT(pipe, family, conditions, config)


X_SOURCES = {"bank": _bank, "sample": _sample}

__all__ = ["X_SOURCES", "Denoiser", "Draw", "LatentBank", "SampleToT"]
