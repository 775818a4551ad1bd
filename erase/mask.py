"""Masked feasible updates, a plug-in for any balancer — our reading of Dine, Furon & Faure (2025),
"Improving Unlearning with Model Updates Probably Aligned with Gradients".

The paper's exact test is not available to us. What we implement, from its abstract: estimate
each coordinate's retain gradient mean and standard error over ``micro_batches`` micro-batches,
and let coordinate i move only when a one-sided z-test says, at confidence 1 − δ, that moving
along −d does not increase ℓ_r to first order, i.e. d_i·E[g_r,i] ≥ 0:

    keep_i  ⇔  sign(d_i)·mean_i − z_{1−δ}·se_i ≥ 0,    se_i = std_i / √m

Every other coordinate of d is zeroed. (A normal quantile stands in for Student's t.)
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import torch


@dataclass
class FeasibleMask:
    delta: float = 0.05  # 1 − confidence
    micro_batches: int = 4

    def __post_init__(self) -> None:
        if not 0.0 < self.delta < 0.5:
            raise ValueError(f"mask delta must lie in (0, 0.5), got {self.delta}")
        if self.micro_batches < 2:
            raise ValueError(f"the mask needs at least 2 micro-batches to estimate a spread, got {self.micro_batches}")

    @property
    def z(self) -> float:
        return NormalDist().inv_cdf(1.0 - self.delta)

    def keep(self, direction: torch.Tensor, retain_samples: torch.Tensor) -> torch.Tensor:
        """Boolean mask over coordinates; ``retain_samples`` is (m, n), ``direction`` is (n,)."""
        m = retain_samples.shape[0]
        mean = retain_samples.mean(0)
        se = retain_samples.std(0, unbiased=True) / m**0.5
        return torch.sign(direction) * mean - self.z * se >= 0

    def apply(self, direction: torch.Tensor, retain_samples: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(masked direction, share of coordinates kept)."""
        keep = self.keep(direction, retain_samples)
        return direction * keep, keep.float().mean().item()
