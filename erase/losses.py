"""Erasure losses as pure tensor functions (METHOD.md, "Losses").

Each takes noise predictions shaped (B, C, h, w) and returns a scalar. Targets computed from
the frozen model carry no gradient: callers compute them under ``torch.no_grad()``, and the
functions detach them again so a mistake cannot leak gradient into the frozen model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def negative_guidance_target(eps_base: torch.Tensor, eps_concept: torch.Tensor, eta: float) -> torch.Tensor:
    """ESD's target ε*(x_t, a, t) − η·(ε*(x_t, c, t) − ε*(x_t, a, t)), from the frozen model.

    a = ∅ (the unconditional prediction) is METHOD.md's loss; an anchor prompt a (the same prompt
    without the concept) pushes away from the concept's own direction c − a only, which keeps
    what the prompt shares with its anchor (the digit, when a style is erased)."""
    eps_base, eps_concept = eps_base.detach(), eps_concept.detach()
    return eps_base - eta * (eps_concept - eps_base)


def negative_guidance_loss(
    eps_forget: torch.Tensor, eps_base: torch.Tensor, eps_concept: torch.Tensor, eta: float
) -> torch.Tensor:
    """ℓ_u = ‖ε_θ(x_t, c, t) − target_u‖² (mean over elements)."""
    return F.mse_loss(eps_forget, negative_guidance_target(eps_base, eps_concept, eta))


def anchor_loss(eps_forget: torch.Tensor, eps_anchor: torch.Tensor) -> torch.Tensor:
    """ℓ_u = ‖ε_θ(x_t, c, t) − ε*(x_t, a, t)‖²: the concept now draws the anchor prompt a."""
    return F.mse_loss(eps_forget, eps_anchor.detach())


def retain_loss(eps_retain: torch.Tensor, eps_retain_frozen: torch.Tensor) -> torch.Tensor:
    """ℓ_r = ‖ε_θ(x_t, r, t) − ε*(x_t, r, t)‖²: retain prompts keep the original predictions."""
    return F.mse_loss(eps_retain, eps_retain_frozen.detach())


def denoising_loss(eps_pred: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The ordinary diffusion loss on user-provided retain images: ‖ε_θ(x_t, r, t) − ε‖²."""
    return F.mse_loss(eps_pred, noise)
