"""EUPMU, the seed paper's implicit gradient surgery: one backward pass of ℓ_u + λ·ℓ_r, with λ
learnt from loss values (METHOD.md, variant 2), and its cheaper "fast" variant (variant 3).

With ``lambda_gain`` set, λ's rate and start are calibrated over a short warm-up
(``calibration.py``); otherwise ``lambda_lr`` (β_abs) and ``lambda_init`` are used as they are.
"""

from __future__ import annotations

from erase.balancers.base import Balancer, BalancerSettings, LagrangeMultiplier, register_balancer, set_flat_grad
from erase.balancers.calibration import Calibration
from erase.balancers.explicit import constrained_direction, two_gradients


@register_balancer
class ImplicitSurgery(Balancer):
    """`eupmu`: after the step, ℓ_r is re-evaluated at θ_{t+1} on the *same* batch, noise and
    timesteps (no grad), and Δℓ_r drives λ. Reads retain_budget, lambda_lr, lambda_max,
    lambda_init, or lambda_gain and lambda_warmup (calibration; learning_rate for its ε)."""

    name = "eupmu"
    reads = ("retain_budget", "lambda_lr", "lambda_max", "lambda_init", "lambda_gain", "lambda_warmup")

    def __init__(self, settings: BalancerSettings):
        super().__init__(settings)
        # With calibration the warm-up does not use λ; its end overwrites the rate and the start.
        self.multiplier = LagrangeMultiplier(
            settings.lambda_lr, settings.retain_budget, settings.lambda_max, settings.lambda_init
        )
        calibrating = settings.lambda_gain is not None
        self.calibration = Calibration(settings.lambda_gain, settings.lambda_warmup) if calibrating else None

    @property
    def probe(self) -> str:
        return self.settings.retain_probe

    @property
    def warming_up(self) -> bool:
        return self.calibration is not None and self.calibration.active

    def one_backward_of_both(self) -> bool:  # a calibration warm-up step takes two
        return not self.warming_up

    def backward(self, loss_forget, loss_retain, params, backward, retain_value=None):
        if self.warming_up:
            return self._explicit_backward(loss_forget, loss_retain, params, backward)
        used = self.multiplier.value
        backward(loss_forget + used * loss_retain)
        return {"lambda": used}

    def _explicit_backward(self, loss_forget, loss_retain, params, backward) -> dict[str, float]:
        """A warm-up step: d = g_u + λ*·g_r (λ* clipped to D) from two backward passes; λ* recorded."""
        g_u, g_r = two_gradients(loss_forget, loss_retain, params, backward)
        eps = self.settings.retain_budget / self.settings.learning_rate
        lam = min(constrained_direction(g_u, g_r, eps)[1], self.settings.lambda_max)
        set_flat_grad(params, g_u + lam * g_r)
        self.calibration.observe_lambda(lam)
        return {"lambda": lam, "warmup": 1.0}

    def _learn(self, increase: float) -> dict[str, float]:
        """Feed one Δℓ_r to the calibration (warm-up) or to λ's update."""
        if self.warming_up:
            result = self.calibration.observe_increase(increase)
            if result:
                if result["lambda_lr"] is None:  # ℓ_r never moved: nothing to calibrate on
                    result["lambda_lr"] = self.settings.lambda_lr
                self.multiplier.lr = result["lambda_lr"]
                self.multiplier.value = min(result["lambda_init"], self.settings.lambda_max)
                return {f"calibrated_{k}": v for k, v in result.items()}
            return {}
        self.multiplier.update(increase)
        return {}

    def skip_step(self):
        if self.warming_up:
            self.calibration.forget_step()

    def after_step(self, loss_retain_before, retain_after):
        after = retain_after()
        increase = after - loss_retain_before
        logs = self._learn(increase)
        return logs | {"retain_after": after, "retain_increase": increase, "lambda_next": self.multiplier.value}

    def state_dict(self):
        state = self.multiplier.state_dict() | {"lambda_lr": self.multiplier.lr}
        if self.calibration is not None:
            state["calibration"] = self.calibration.state_dict()
        return state

    def load_state_dict(self, state):
        self.multiplier.load_state_dict(state)
        self.multiplier.lr = float(state.get("lambda_lr", self.multiplier.lr))
        if self.calibration is not None and "calibration" in state:
            self.calibration.load_state_dict(state["calibration"])


@register_balancer
class FastImplicitSurgery(ImplicitSurgery):
    """`eupmu-fast`: no extra forward; the next step's ℓ_r(θ_{t+1}) on the *next* batch stands in
    for the re-evaluation. Cheaper, noisier (batch-to-batch variance enters Δℓ_r; a calibrated β
    is smaller for it, by that noise).

    With ``lambda_smoothing`` d > 0 the values compared are a running average of ℓ_r,
    a_t = d·a_{t−1} + (1 − d)·ℓ_r(θ_t): its step-to-step change still sums to how far ℓ_r has
    risen (λ = β·a_t with ε = 0 and no clipping), while a batch's own noise moves it (1 − d)
    as much."""

    name = "eupmu-fast"
    # λ = β × the (smoothed) level of ℓ_r: ~1e-4–1e-3 on the default model, so β = 3e4 gives λ ~ 3–30
    # (smoothing 0.9: λ then moves ~2% of its mean a step, not ~25%; README, "λ that tracks")
    defaults = ImplicitSurgery.defaults | {"lambda_lr": 3e4, "lambda_smoothing": 0.9}

    def __init__(self, settings: BalancerSettings):
        super().__init__(settings)
        self.previous_retain: float | None = None
        self.held = False  # the last step was skipped: the next ℓ_r joins the average but drives nothing

    @property
    def probe(self) -> str:  # its Δℓ_r already comes from the next, untrained-on batch (in ``backward``)
        return "same"

    def backward(self, loss_forget, loss_retain, params, backward, retain_value=None):
        current = float(loss_retain.detach()) if retain_value is None else retain_value
        logs = {}
        if self.previous_retain is not None:
            decay = self.settings.lambda_smoothing
            if self.warming_up and self.calibration.steps <= 1:
                # The calibration leaves out this first rise from θ*; an average lagging behind it
                # would leak (1 − d)·dᵏ of it into every warm-up Δ, measured as noise. Start the
                # average at the first value after θ* instead.
                decay = 0.0
            current = decay * self.previous_retain + (1 - decay) * current
            if not self.held:
                logs["retain_increase"] = current - self.previous_retain
                logs |= self._learn(logs["retain_increase"])
        self.previous_retain, self.held = current, False
        return logs | super().backward(loss_forget, loss_retain, params, backward)  # λ needs no ℓ_r value

    def after_step(self, loss_retain_before, retain_after):
        return {}

    def skip_step(self):
        """θ did not move, so the next ℓ_r is one more sample at the same θ: it joins the average
        (restarting the average from that one value would let its noise into λ as the average
        settles back), but its change is not a Δ across a step and drives nothing."""
        super().skip_step()
        self.held = self.previous_retain is not None

    def state_dict(self):
        return super().state_dict() | {"previous_retain": self.previous_retain, "held": self.held}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.previous_retain = state.get("previous_retain")
        self.held = bool(state.get("held", False))
