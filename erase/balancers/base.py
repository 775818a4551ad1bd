"""The interface every balancer implements, and the registry that names them.

A balancer turns one batch's unlearning loss ℓ_u and retain loss ℓ_r into the parameter
gradient the optimiser applies (METHOD.md, "The constrained step"), and keeps whatever state it
needs (λ) in ``state_dict`` so a resumed run continues exactly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

# backward(loss, retain_graph=...) — accelerate's Accelerator.backward in the loop.
Backward = Callable[..., None]


@dataclass
class BalancerSettings:
    """Numbers the balancers read; which ones matter is said in each balancer's docstring.

    ``retain_budget`` (ε_abs) and ``lambda_lr`` (β_abs) are in loss units per step: λ rises when
    ℓ_r grew by more than ε_abs in one step. ``explicit`` converts ε_abs to its gradient-space
    ε = ε_abs / learning_rate (exact for SGD, approximate for Adam).
    """

    retain_weight: float = 1.0  # w, for `weighted`
    retain_budget: float = 0.0  # ε_abs ≥ 0
    lambda_lr: float = 1.0  # β_abs > 0
    lambda_max: float = 100.0  # D
    lambda_init: float = 0.0  # λ's start (without calibration)
    lambda_gain: float | None = None  # given: calibrate β_abs = gain / σ(Δℓ_r) (calibration.py)
    lambda_warmup: int = 10  # warm-up steps of the calibration
    learning_rate: float = 1e-5  # α, for the explicit variant's ε conversion
    lambda_smoothing: float = 0.0  # eupmu-fast: decay of its running average of ℓ_r
    retain_probe: str = "same"  # eupmu: Δℓ_r on the step's own retain batch, a fresh one, or the next one


class Balancer(ABC):
    name: ClassVar[str]
    # Settings whose default depends on the method: a TrainConfig field left at None takes the
    # value here. λ's rate is in loss units per step, and how Δℓ_r is measured sets the units that
    # matter (eupmu's same-batch step change vs eupmu-fast's running level), so each has its own.
    defaults: ClassVar[dict[str, float]] = {"lambda_lr": 3e6, "lambda_smoothing": 0.0}
    # The TrainConfig settings only some methods read (`erase train` notes one given to another)
    reads: ClassVar[tuple[str, ...]] = ()
    needs_retain: ClassVar[bool] = True
    backward_passes: ClassVar[int] = 1
    constrains_update: ClassVar[bool] = False  # the loop then keeps θ before the step for it

    @classmethod
    def can_join_halves(cls) -> bool:
        """Whether the method's steps are one backward of ℓ_u + λ·ℓ_r, so that the loop may run the
        forget and retain halves through the trained UNet as one call (``--joint-forward``)."""
        return cls.needs_retain and cls.backward_passes == 1

    def one_backward_of_both(self) -> bool:
        """Whether *this* step is (a method may take two backward passes on some steps)."""
        return self.can_join_halves()

    @property
    def probe(self) -> str:
        """Where ``after_step``'s ℓ_r before and after the step is measured (``--retain-probe``):
        ``same`` = the step's own retain batch, ``fresh`` = one drawn for the purpose, ``next`` =
        the next step's batch (its ℓ_r after the step is that step's own retain loss)."""
        return "same"

    def __init__(self, settings: BalancerSettings):
        self.settings = settings

    @abstractmethod
    def backward(
        self,
        loss_forget: torch.Tensor,
        loss_retain: torch.Tensor | None,
        params: list[torch.Tensor],
        backward: Backward,
        retain_value: float | None = None,
    ) -> dict[str, float]:
        """Leave the update direction d in ``p.grad`` for every ``p`` in ``params``; return log values.

        ``retain_value`` is ℓ_r averaged over all processes (the loop passes it so that λ stays
        the same on every GPU); when absent the local value is used."""

    def constrain_update(
        self, params: list[torch.Tensor], before: torch.Tensor, keep: torch.Tensor | None
    ) -> dict[str, float]:
        """Called right after ``optimizer.step()`` for balancers with ``constrains_update``: the
        update the optimiser applied is θ − ``before`` (flat); change it in place if the
        balancer's guarantee must hold for it. ``keep`` marks the coordinates the mask lets move."""
        return {}

    def after_step(self, loss_retain_before: float | None, retain_after: Callable[[], float]) -> dict[str, float]:
        """Called after ``optimizer.step()`` (for the ``next`` probe: when the next step has its
        retain loss); ``retain_after()`` is ℓ_r after the step on the batch ``loss_retain_before``
        was measured on."""
        return {}

    def skip_step(self) -> None:  # noqa: B027 (nothing to forget by default)
        """The optimiser skipped this step (fp16 overflow): θ did not move, ``after_step`` is not
        called, and nothing measured across this step may drive λ."""
        return None

    def state_dict(self) -> dict[str, float]:
        return {}

    def load_state_dict(self, state: dict[str, float]) -> None:  # noqa: B027 (stateless by default)
        return None


def flat_grad(params: list[torch.Tensor]) -> torch.Tensor:
    """All parameters' gradients as one float vector (zeros where a gradient is missing)."""
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params])


def flat_params(params: list[torch.Tensor]) -> torch.Tensor:
    """All parameters' values as one float vector (a copy)."""
    return torch.cat([p.detach().reshape(-1).float() for p in params])


# cuBLAS's dot takes at most 2^31 − 1 elements; SDXL's full parameter set has 2.6 billion
# (found on a GPU: `explicit` with --parameters full stopped with "dot only supports n ...").
DOT_CHUNK = 2**30


def flat_dot(a: torch.Tensor, b: torch.Tensor) -> float:
    """a·b for flat vectors of any length: one dot per DOT_CHUNK elements, summed in float64.
    Below DOT_CHUNK it is exactly ``float(a.dot(b))``."""
    if a.numel() <= DOT_CHUNK:
        return float(a.dot(b))
    return sum(float(x.dot(y)) for x, y in zip(a.split(DOT_CHUNK), b.split(DOT_CHUNK), strict=True))


@torch.no_grad()
def set_flat_params(params: list[torch.Tensor], flat: torch.Tensor) -> None:
    """Write a flat vector back into the parameters' values (inverse of ``flat_params``)."""
    offset = 0
    for p in params:
        p.copy_(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()


def set_flat_grad(params: list[torch.Tensor], flat: torch.Tensor) -> None:
    """Write a flat vector back into the parameters' ``.grad`` (inverse of ``flat_grad``)."""
    offset = 0
    for p in params:
        p.grad = flat[offset : offset + p.numel()].view_as(p).to(p.dtype)
        offset += p.numel()


BALANCERS: dict[str, type[Balancer]] = {}


def register_balancer(cls: type[Balancer]) -> type[Balancer]:
    BALANCERS[cls.name] = cls
    return cls


def build_balancer(name: str, settings: BalancerSettings) -> Balancer:
    if name not in BALANCERS:
        raise KeyError(f"unknown balancer {name!r}; choose one of {', '.join(BALANCERS)}")
    return BALANCERS[name](settings)


class LagrangeMultiplier:
    """λ for the implicit variants, updated from loss values only (METHOD.md, loss units):

    λ ← clip(λ + β_abs·(Δℓ_r − ε_abs), 0, D),   Δℓ_r = ℓ_r(θ_{t+1}) − ℓ_r(θ_t)
    """

    def __init__(self, lr: float, budget: float, maximum: float, initial: float = 0.0):
        self.lr, self.budget, self.maximum = lr, budget, maximum
        self.value = float(min(max(initial, 0.0), maximum))

    def update(self, retain_increase: float) -> float:
        self.value = float(min(max(self.value + self.lr * (retain_increase - self.budget), 0.0), self.maximum))
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"lambda": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["lambda"])
