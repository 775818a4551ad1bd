"""λ's rate and starting value, calibrated from the model itself (opt-in: `--lambda-gain`).

The implicit rule λ ← clip(λ + β_abs·(Δℓ_r − ε_abs), 0, D) is an integral controller whose
input carries noise: Δℓ_r, the retain loss's change over one step, is measured on one batch. A
β_abs given in loss units depends on the model's loss scale (1e-6 a step on the default model,
other units on SD 1.5) and, set too high, makes λ bang-bang between 0 and its cap (METHOD.md,
"In practice"). With ``--lambda-gain`` β_abs comes from the run's own noise instead:

  * warm-up (the first ``warmup`` steps): λ does not integrate yet. Each step takes the explicit
    closed form instead, λ*_t = max(0, −(g_u·g_r + ε)/‖g_r‖²) from two backward passes (the only
    steps that need gradients for λ), so the run starts constrained, not with a pure-ESD burst
    that would pin λ at its cap;
  * then β_abs = gain / σ, with σ the robust spread (1.4826 · median absolute deviation) of the
    warm-up's Δℓ_r; λ starts at the median of the warm-up's λ*_t. The first step is left out of
    both: it starts at θ*, where g_r = 0 and ℓ_r = 0, so it says nothing about either.

``gain`` is then how far one σ of noise moves λ in one step, in λ's units, whatever the model.
"""

from __future__ import annotations

import statistics

MAD_TO_SIGMA = 1.4826  # σ of a normal distribution per unit of median absolute deviation


class Calibration:
    def __init__(self, gain: float, warmup: int):
        self.gain, self.warmup = gain, warmup
        self.increases: list[float] = []  # Δℓ_r of warm-up steps 2, 3, ...
        self.lambdas: list[float] = []  # λ*_t of warm-up steps with g_r ≠ 0
        self.steps = 0  # warm-up steps taken
        self.result: dict[str, float] | None = None  # lambda_lr, lambda_init, retain_increase_noise

    @property
    def active(self) -> bool:
        return self.result is None

    def observe_lambda(self, lam: float) -> None:
        self.steps += 1
        if self.steps > 1:  # the first step starts at θ*, where g_r = 0 (or rounding noise)
            self.lambdas.append(lam)

    def forget_step(self) -> None:
        """Undo this step's ``observe_lambda``: the optimiser skipped it (fp16 overflow), so its λ*
        came from overflowed gradients and no Δℓ_r follows it."""
        if self.steps > 1:
            self.lambdas.pop()
        self.steps -= 1

    def observe_increase(self, increase: float) -> dict[str, float]:
        """Record one warm-up Δℓ_r; at the end of the warm-up return the calibration (else {})."""
        if self.steps > 1:  # the first step's rise is left out (see the module docstring)
            self.increases.append(increase)
        if self.steps < self.warmup:
            return {}
        self.result = calibrate(self.increases, self.lambdas, self.gain)
        return self.result

    def state_dict(self) -> dict:
        return {"steps": self.steps, "increases": self.increases, "lambdas": self.lambdas, "result": self.result}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        self.increases = [float(x) for x in state["increases"]]
        self.lambdas = [float(x) for x in state["lambdas"]]
        self.result = state["result"]


def robust_spread(values: list[float]) -> float:
    """σ estimated as 1.4826 · median |x − median(x)|; the plain σ when that is 0 (few values)."""
    if len(values) < 2:
        return 0.0
    middle = statistics.median(values)
    spread = MAD_TO_SIGMA * statistics.median(abs(v - middle) for v in values)
    return spread if spread > 0 else statistics.pstdev(values)


def calibrate(increases: list[float], lambdas: list[float], gain: float) -> dict[str, float | None]:
    """The calibration; ``lambda_lr`` is None when Δℓ_r did not vary at all (nothing to divide
    by: the balancer then keeps the given --lambda-lr and says so in the log)."""
    noise = robust_spread(increases)
    return {
        "lambda_lr": gain / noise if noise > 0 else None,
        "lambda_init": statistics.median(lambdas) if lambdas else 0.0,
        "retain_increase_noise": noise,
    }
