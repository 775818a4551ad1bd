"""Where a training step's x_t comes from (``--x-source``): one module per source, registered here.

Each source is built as ``Source(pipe, family, prompts, conditions, config, progress)`` (prompts
and their conditioning by kind, "forget" and "retain") and offers
``draw(kind, batch, generator, denoise, weights=None) -> Draw`` (``weights``: each prompt's
probability of being drawn; None draws uniformly). A source that already has the frozen model's
predictions at its points hands them over in the Draw (``trajectory``).
"""

from __future__ import annotations

from erase.xt_sources.bank import LatentBank
from erase.xt_sources.base import Denoiser, Draw
from erase.xt_sources.sample_to_t import SampleToT
from erase.xt_sources.trajectory import FrozenTrajectories

X_SOURCES = {"bank": LatentBank, "sample": SampleToT, "trajectory": FrozenTrajectories}

__all__ = ["X_SOURCES", "Denoiser", "Draw", "FrozenTrajectories", "LatentBank", "SampleToT"]
