"""The explicit constrained step (the paper's UNGrad baseline, METHOD.md variant 1): two
backward passes give g_u and g_r, and the closed form

    d* = g_u + λ*·g_r,   λ* = max(0, −(g_u·g_r + ε) / ‖g_r‖²)

is written into the parameters' gradients. With ε = 0 it is a one-sided projection of g_u off
g_r. ε here is in gradient units: ε = retain_budget / learning_rate.
"""

from __future__ import annotations

import torch

from erase.balancers.base import Balancer, flat_grad, register_balancer, set_flat_grad


def constrained_direction(g_u: torch.Tensor, g_r: torch.Tensor, eps: float) -> tuple[torch.Tensor, float]:
    """(d*, λ*) for flat gradients; λ* = 0 when the gradients do not conflict beyond ε."""
    norm_sq = float(g_r.dot(g_r))
    if norm_sq == 0.0:
        return g_u, 0.0
    lam = max(0.0, -(float(g_u.dot(g_r)) + eps) / norm_sq)
    return g_u + lam * g_r, lam


@register_balancer
class ExplicitSurgery(Balancer):
    """`explicit`: exact λ* per step from two gradients (reads retain_budget, learning_rate)."""

    name = "explicit"
    backward_passes = 2

    @staticmethod
    def _take_grads(params: list[torch.Tensor]) -> torch.Tensor:
        flat = flat_grad(params)
        for p in params:
            p.grad = None
        return flat

    def backward(self, loss_forget, loss_retain, params, backward, retain_value=None):
        for p in params:
            p.grad = None
        backward(loss_forget, retain_graph=True)
        g_u = self._take_grads(params)
        backward(loss_retain)
        g_r = self._take_grads(params)
        eps = self.settings.retain_budget / self.settings.learning_rate
        direction, lam = constrained_direction(g_u, g_r, eps)
        set_flat_grad(params, direction)
        return {"lambda": lam, "grad_dot": float(g_u.dot(g_r))}
