"""EUPMU, the seed paper's implicit gradient surgery: one backward pass of ℓ_u + λ·ℓ_r, with λ
learnt from loss values (METHOD.md, variant 2), and its cheaper "fast" variant (variant 3)."""

from __future__ import annotations

from erase.balancers.base import Balancer, BalancerSettings, LagrangeMultiplier, register_balancer


@register_balancer
class ImplicitSurgery(Balancer):
    """`eupmu`: after the step, ℓ_r is re-evaluated at θ_{t+1} on the *same* batch, noise and
    timesteps (no grad), and Δℓ_r drives λ. Reads retain_budget, lambda_lr, lambda_max."""

    name = "eupmu"

    def __init__(self, settings: BalancerSettings):
        super().__init__(settings)
        self.multiplier = LagrangeMultiplier(
            settings.lambda_lr, settings.retain_budget, settings.lambda_max, settings.lambda_init
        )

    def backward(self, loss_forget, loss_retain, params, backward, retain_value=None):
        used = self.multiplier.value
        backward(loss_forget + used * loss_retain)
        return {"lambda": used}

    def after_step(self, loss_retain_before, retain_after):
        after = retain_after()
        increase = after - loss_retain_before
        self.multiplier.update(increase)
        return {"retain_after": after, "retain_increase": increase, "lambda_next": self.multiplier.value}

    def state_dict(self):
        return self.multiplier.state_dict()

    def load_state_dict(self, state):
        self.multiplier.load_state_dict(state)


@register_balancer
class FastImplicitSurgery(ImplicitSurgery):
    """`eupmu-fast`: no extra forward; the next step's ℓ_r(θ_{t+1}) on the *next* batch stands in
    for the re-evaluation. Cheaper, noisier (batch-to-batch variance enters Δℓ_r)."""

    name = "eupmu-fast"

    def __init__(self, settings: BalancerSettings):
        super().__init__(settings)
        self.previous_retain: float | None = None

    def backward(self, loss_forget, loss_retain, params, backward, retain_value=None):
        current = float(loss_retain.detach()) if retain_value is None else retain_value
        logs = {}
        if self.previous_retain is not None:
            logs["retain_increase"] = current - self.previous_retain
            self.multiplier.update(logs["retain_increase"])
        self.previous_retain = current
        return logs | super().backward(loss_forget, loss_retain, params, backward, retain_value)

    def after_step(self, loss_retain_before, retain_after):
        return {}

    def state_dict(self):
        return self.multiplier.state_dict() | {"previous_retain": self.previous_retain}

    def load_state_dict(self, state):
        self.multiplier.load_state_dict(state)
        self.previous_retain = state.get("previous_retain")
