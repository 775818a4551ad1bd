"""Masked feasible updates, a plug-in for any balancer — our reading of Dine, Furon & Faure (2025),
"Improving Unlearning with Model Updates Probably Aligned with Gradients".

The paper's exact test is not available to us. What we implement, from its abstract: estimate
each coordinate's retain gradient mean and standard error over ``micro_batches`` (m)
micro-batches, and let coordinate i move only when a one-sided t-test says, at confidence 1 − δ,
that moving along −d does not increase ℓ_r to first order, i.e. d_i·E[g_r,i] ≥ 0:

    keep_i  ⇔  sign(d_i)·mean_i − t_{1−δ, m−1}·se_i ≥ 0,    se_i = std_i / √m

(Student's t with m − 1 degrees of freedom: the spread is estimated from the same m samples; the
normal quantile would keep a coordinate with no real sign ~2× too often at m = 4.)

"Move only" is a promise about the parameters, not the gradient: Adam's momentum and its
per-coordinate scaling move a coordinate whose gradient is zeroed, and can move a kept one
against the sign its test allowed. So the loop also calls ``hold`` after the optimiser's step:
the same test is applied to the update actually made, and every coordinate that fails it here
or failed it on d goes back to its value before the step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.special import stdtrit

from erase.balancers.base import flat_params, set_flat_params


def student_t_quantile(p: float, dof: int) -> float:
    """t with P(T ≤ t) = p for Student's t with ``dof`` degrees of freedom (SciPy's inverse CDF)."""
    return float(stdtrit(dof, p))


@dataclass
class FeasibleMask:
    delta: float = 0.05  # 1 − confidence
    micro_batches: int = 4

    def __post_init__(self) -> None:
        if not 0.0 < self.delta < 0.5:
            raise ValueError(f"mask delta must lie in (0, 0.5), got {self.delta}")
        if self.micro_batches < 2:
            raise ValueError(f"the mask needs at least 2 micro-batches to estimate a spread, got {self.micro_batches}")
        self.quantile = student_t_quantile(1.0 - self.delta, self.micro_batches - 1)

    def keep(self, direction: torch.Tensor, retain_samples: torch.Tensor) -> torch.Tensor:
        """Boolean mask over coordinates; ``retain_samples`` is (m, n), ``direction`` is (n,)."""
        m = retain_samples.shape[0]
        mean = retain_samples.mean(0)
        se = retain_samples.std(0) / m**0.5  # torch's default: the sample std, over m − 1
        return torch.sign(direction) * mean - self.quantile * se >= 0

    def apply(self, direction: torch.Tensor, retain_samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked direction, the boolean keep mask)."""
        keep = self.keep(direction, retain_samples)
        return direction * keep, keep

    @torch.no_grad()
    def hold(
        self, params: list[torch.Tensor], before: torch.Tensor, keep: torch.Tensor, retain_samples: torch.Tensor
    ) -> torch.Tensor:
        """After the optimiser's step: put back every coordinate that was rejected, or whose
        applied update u fails the test (moving by u = −α·d means testing d ∝ −u). Returns the
        coordinates left moved."""
        after = flat_params(params)
        allowed = keep & self.keep(before - after, retain_samples)
        set_flat_params(params, torch.where(allowed, after, before))
        return allowed
