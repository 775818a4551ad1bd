"""A UNet's output in ε units, whatever the model was trained to predict.

SD 1.x and SD 2-base predict the noise ε; SD 2.1-768 predicts v = α_t·ε − σ_t·x_0. A loss on v
is 1/α_t² times the same loss on ε (up to ~200× at t = 999), so the balancer's loss-unit knobs
(``--retain-budget``, ``--lambda-lr``) would mean something else on every family. The loop
therefore turns every prediction into ε first. The conversion is affine in the output with one
coefficient per row, so the ε-space loss is the v-space loss weighted by α_t² per row, and
ESD's negative-guidance target (a combination whose weights sum to 1) keeps its meaning.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from prompts import InputError

# prediction_type → ε from (output, x_t, α_t, σ_t), each broadcast per row
TO_EPSILON: dict[str, Callable[..., torch.Tensor]] = {
    "epsilon": lambda out, x_t, alpha, sigma: out,
    "v_prediction": lambda out, x_t, alpha, sigma: alpha * out + sigma * x_t,
    "sample": lambda out, x_t, alpha, sigma: (x_t - alpha * out) / sigma,
}


class EpsilonSpace:
    """Maps a model's raw outputs at timesteps ``t`` to ε, from its scheduler's noise schedule."""

    def __init__(self, scheduler):
        self.kind = scheduler.config.get("prediction_type", "epsilon")
        if self.kind not in TO_EPSILON:
            raise InputError(
                f"the model's scheduler predicts {self.kind!r}; erase trains models that predict "
                f"{', '.join(TO_EPSILON)}: set prediction_type in its scheduler_config.json to what it was trained on"
            )
        # ᾱ_t per timestep, moved to the outputs' device once (a lookup on the CPU would make every
        # call wait for the GPU)
        self.alphas_cumprod = None if self.kind == "epsilon" else scheduler.alphas_cumprod.to(torch.float64)

    def __call__(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.kind == "epsilon":
            return output
        shape = (-1,) + (1,) * (output.ndim - 1)
        if self.alphas_cumprod.device != output.device:
            self.alphas_cumprod = self.alphas_cumprod.to(output.device)
        cumprod = self.alphas_cumprod[t.to(output.device).long()]
        alpha = cumprod.sqrt().to(output.dtype).reshape(shape)
        sigma = (1 - cumprod).sqrt().to(output.dtype).reshape(shape)
        return TO_EPSILON[self.kind](output, x_t.to(output.dtype), alpha, sigma)
