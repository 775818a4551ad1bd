"""Retain prompts drawn where the erasure hurts (``--retain-focus``).

The retain loss is a mean over retain prompts drawn uniformly, so a concept the erasure damages
most (erasing "three" moved "two" most on the default model) gets no more of the retain
gradient than any other, and the worst kept concept, the number the quality bar reads, slips.
Here each retain prompt carries a running average of its own retain loss (its drift from the
original model's prediction), and a share of every retain batch is drawn in proportion to it:
a soft version of holding the worst-off concept, as distributionally robust training does. The
rest of the batch stays uniform, so no prompt goes unwatched.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

STATE_KEY = "retain_drift"


class RetainFocus:
    def __init__(self, prompts: int, share: float, decay: float = 0.9, power: float = 2.0):
        """``prompts``: the number of retain prompts; ``share``: the part of the sampling mass
        that follows the drift, in proportion to drift**``power``; ``decay``: the running
        average's weight on its past, per batch in which the prompt was seen. The drift of the
        most-hurt digit was only about twice the others' (erasing three on the default model: two
        8.5e-4, the rest 3.5–5.1e-4), so the square: with the first power its prompts got 16% of
        the rows, too few to hold it (measured in README, "Benchmarks: the erasure/utility trade-off")."""
        self.drift = torch.zeros(prompts, dtype=torch.float64)
        self.share, self.decay, self.power = share, decay, power

    def weights(self) -> torch.Tensor | None:
        """Each prompt's probability of being drawn, or None (uniform) before any drift is known."""
        total = self.drift.sum()
        if total <= 0:
            return None
        uniform = torch.full_like(self.drift, 1.0 / len(self.drift))
        focused = self.drift**self.power
        return (1 - self.share) * uniform + self.share * focused / focused.sum()

    def observe(
        self, rows: torch.Tensor, errors: torch.Tensor, total: Callable[[torch.Tensor], torch.Tensor] = lambda v: v
    ) -> None:
        """Fold one batch's per-row retain losses into each seen prompt's average. ``total`` sums
        a tensor over processes, so every process keeps the same averages (and draws alike)."""
        count = len(self.drift)
        rows = rows.detach().cpu().long()
        sums = torch.zeros(count, dtype=torch.float64).index_add_(0, rows, errors.detach().cpu().double())
        seen = torch.zeros(count, dtype=torch.float64).index_add_(0, rows, torch.ones(len(rows), dtype=torch.float64))
        both = total(torch.stack([sums, seen]).float()).cpu().double()  # float32: MPS has no float64
        sums, seen = both[0], both[1]
        hit = seen > 0
        mean = sums[hit] / seen[hit]
        old = self.drift[hit]
        self.drift[hit] = torch.where(old > 0, self.decay * old + (1 - self.decay) * mean, mean)

    def state(self) -> dict[str, torch.Tensor]:
        return {STATE_KEY: self.drift.clone()}

    def load_state(self, extra: dict[str, torch.Tensor]) -> None:
        self.drift = extra[STATE_KEY].to(torch.float64).clone()
