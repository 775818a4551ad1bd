"""Balancers on small problems whose gradients we know by hand (METHOD.md, "The constrained step")."""

from __future__ import annotations

import json

import pytest
import torch

from erase.balancers import BALANCERS, BalancerSettings, LagrangeMultiplier, build_balancer
from erase.balancers.calibration import MAD_TO_SIGMA, Calibration
from erase.balancers.explicit import constrained_direction
from erase.mask import FeasibleMask, student_t_quantile


def plain_backward(loss, **kwargs):
    loss.backward(**kwargs)


def linear_problem(theta: torch.Tensor):
    """ℓ_u = c·θ and ℓ_r = w·θ: constant gradients g_u = c = (1, 0), g_r = w = (−1, 1).
    They conflict: g_u·g_r = −1, ‖g_r‖² = 2."""
    c, w = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    return (c * theta).sum(), (w * theta).sum()


def test_explicit_writes_the_closed_form_direction():
    """λ* = max(0, −(g_u·g_r + ε)/‖g_r‖²). With ε = 0: λ* = −(−1)/2 = 0.5 and
    d = (1, 0) + 0.5·(−1, 1) = (0.5, 0.5), so g_r·d = 0 (the constraint is active).
    With ε = 0.2 (budget 0.02 at α = 0.1): λ* = 0.8/2 = 0.4, d = (0.6, 0.4), g_r·d = −0.2 = −ε."""
    for budget, lam, direction in ((0.0, 0.5, [0.5, 0.5]), (0.02, 0.4, [0.6, 0.4])):
        theta = torch.zeros(2, requires_grad=True)
        balancer = build_balancer("explicit", BalancerSettings(retain_budget=budget, learning_rate=0.1))
        logs = balancer.backward(*linear_problem(theta), [theta], plain_backward)
        assert logs["lambda"] == pytest.approx(lam)
        assert torch.allclose(theta.grad, torch.tensor(direction))


def test_without_conflict_lambda_is_zero_and_d_is_g_u():
    g_u, g_r = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])  # orthogonal: no conflict
    direction, lam = constrained_direction(g_u, g_r, eps=0.0)
    assert lam == 0.0 and torch.equal(direction, g_u)
    direction, lam = constrained_direction(g_u, torch.tensor([1.0, 1.0]), eps=0.0)  # agreeing
    assert lam == 0.0 and torch.equal(direction, g_u)


def run_sgd(name: str, settings: BalancerSettings, steps: int, problem=linear_problem, alpha: float = 0.1):
    theta = torch.zeros(2, requires_grad=True)
    balancer = build_balancer(name, settings)
    lambdas, increases = [], []
    for _ in range(steps):
        theta.grad = None
        loss_u, loss_r = problem(theta)
        logs = balancer.backward(loss_u, loss_r, [theta], plain_backward)
        before = float(loss_r.detach())
        with torch.no_grad():
            theta -= alpha * theta.grad
        balancer.after_step(before, lambda theta=theta: float(problem(theta)[1].detach()))
        lambdas.append(logs["lambda"])
        increases.append(float(problem(theta)[1].detach()) - before)
    return lambdas, increases, balancer


@pytest.mark.parametrize("name", ["eupmu", "eupmu-fast"])
def test_implicit_lambda_settles_at_lambda_star_and_respects_the_budget(name):
    """SGD with α = 0.1: Δℓ_r = −α(g_u·g_r + λ‖g_r‖²) = 0.1 − 0.2λ. The rule
    λ ← λ + β(Δℓ_r − ε_abs) has its fixed point where Δℓ_r = ε_abs, i.e. at
    λ = −(g_u·g_r + ε_abs/α)/‖g_r‖² = λ*; with ε_abs = 0.02 that is 0.4 (as the explicit test)."""
    settings = BalancerSettings(retain_budget=0.02, lambda_lr=2.0, lambda_max=10.0)
    lambdas, increases, _ = run_sgd(name, settings, steps=60)
    assert lambdas[-1] == pytest.approx(0.4, abs=1e-4)
    assert max(increases[30:]) <= 0.02 + 1e-4
    assert increases[0] == pytest.approx(0.1)  # λ starts at 0: the first step spends more than the budget


def test_the_budget_sign_is_right():
    """A larger budget lets ℓ_r rise more, so λ settles lower: λ*(ε_abs = 0) = 0.5 > λ*(0.04) = 0.3."""
    tight = run_sgd("eupmu", BalancerSettings(retain_budget=0.0, lambda_lr=2.0), steps=60)[0][-1]
    loose = run_sgd("eupmu", BalancerSettings(retain_budget=0.04, lambda_lr=2.0), steps=60)[0][-1]
    assert tight == pytest.approx(0.5, abs=1e-4) and loose == pytest.approx(0.3, abs=1e-4)


def test_implicit_lambda_stays_zero_without_conflict():
    """ℓ_u = ½(θ₁ − 1)², ℓ_r = ½θ₂²: moving θ₁ never changes ℓ_r, so Δℓ_r = 0 ≤ ε and λ stays 0."""

    def separate(theta):
        return 0.5 * (theta[0] - 1) ** 2, 0.5 * theta[1] ** 2

    for name in ("eupmu", "eupmu-fast"):
        lambdas, increases, _ = run_sgd(name, BalancerSettings(retain_budget=0.0, lambda_lr=5.0), 20, separate)
        assert max(lambdas) == 0.0 and max(increases) == 0.0


def test_implicit_on_a_curved_retain_loss_keeps_increases_within_budget():
    """ℓ_u = c·θ keeps pulling; ℓ_r = ½‖θ − (0, 0)‖²·0.1 + w·θ curves. After a burn-in each step's
    retain increase stays within the budget up to 10% (the first-order rule lags a curved ℓ_r)."""

    def curved(theta):
        c, w = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
        return (c * theta).sum(), (w * theta).sum() + 0.05 * (theta**2).sum()

    _, increases, _ = run_sgd("eupmu", BalancerSettings(retain_budget=0.02, lambda_lr=2.0, lambda_max=50), 200, curved)
    assert max(increases[50:]) <= 0.02 * 1.1


def test_lambda_is_clipped_to_zero_and_d():
    multiplier = LagrangeMultiplier(lr=10.0, budget=0.0, maximum=2.0)
    assert multiplier.update(+1.0) == 2.0  # clipped at D
    assert multiplier.update(-5.0) == 0.0  # never negative


def test_fixed_weight_and_unlearn_only():
    theta = torch.zeros(2, requires_grad=True)
    build_balancer("weighted", BalancerSettings(retain_weight=3.0)).backward(
        *linear_problem(theta), [theta], plain_backward
    )
    assert torch.allclose(theta.grad, torch.tensor([1.0, 0.0]) + 3.0 * torch.tensor([-1.0, 1.0]))
    theta.grad = None
    build_balancer("none", BalancerSettings()).backward(*linear_problem(theta), [theta], plain_backward)
    assert torch.equal(theta.grad, torch.tensor([1.0, 0.0]))


@pytest.mark.parametrize("name", ["eupmu", "eupmu-fast"])
def test_lambda_state_round_trips(name):
    _, _, balancer = run_sgd(name, BalancerSettings(retain_budget=0.02, lambda_lr=2.0), steps=5)
    fresh = build_balancer(name, BalancerSettings(retain_budget=0.02, lambda_lr=2.0))
    fresh.load_state_dict(balancer.state_dict())
    assert fresh.state_dict() == balancer.state_dict()


def test_registry_names():
    assert set(BALANCERS) == {"none", "weighted", "eupmu", "eupmu-fast", "explicit"}
    with pytest.raises(KeyError, match="unknown balancer 'nope'"):
        build_balancer("nope", BalancerSettings())


def test_mask_never_moves_a_coordinate_whose_retain_sign_is_uncertain():
    """Columns: certainly positive, zero-mean noise, certainly negative, positive but noisy."""
    samples = torch.tensor(
        [[1.0, 1.0, -1.0, 2.0], [1.1, -1.0, -1.1, -1.5], [0.9, 1.0, -0.9, 2.0], [1.0, -1.0, -1.0, -1.5]]
    )
    mask = FeasibleMask(delta=0.05, micro_batches=4)
    keep = mask.keep(torch.tensor([1.0, 1.0, 1.0, 1.0]), samples)
    assert keep.tolist() == [True, False, False, False]
    keep = mask.keep(torch.tensor([-1.0, -1.0, -1.0, -1.0]), samples)  # moving the other way
    assert keep.tolist() == [False, False, True, False]
    masked, keep = mask.apply(torch.tensor([2.0, 3.0, 4.0, 5.0]), samples)
    assert masked.tolist() == [2.0, 0.0, 0.0, 0.0] and keep.tolist() == [True, False, False, False]


@pytest.mark.parametrize("micro_batches", [2, 4, 8])
def test_mask_on_pure_noise_keeps_delta_of_the_coordinates(micro_batches):
    """Zero-mean retain gradients: the one-sided test must keep a share δ by chance, at any m. The
    normal quantile in place of Student's t keeps 0.099 at m = 4 and 0.17 at m = 2."""
    torch.manual_seed(0)
    samples = torch.randn(micro_batches, 40_000)
    keep = FeasibleMask(delta=0.05, micro_batches=micro_batches).keep(torch.ones(40_000), samples)
    assert keep.float().mean().item() == pytest.approx(0.05, abs=0.006)  # 5σ of a binomial share


@pytest.mark.parametrize(
    ("p", "dof", "table"),  # Student's t tables (e.g. NIST/SEMATECH e-Handbook, 1.3.6.7.2)
    [(0.95, 1, 6.314), (0.95, 2, 2.920), (0.95, 3, 2.353), (0.95, 7, 1.895), (0.975, 10, 2.228), (0.99, 30, 2.457)],
)
def test_student_t_quantile_matches_the_tables(p, dof, table):
    assert student_t_quantile(p, dof) == pytest.approx(table, abs=5e-4)


@pytest.mark.parametrize(("kwargs", "message"), [({"delta": 0.0}, "delta"), ({"micro_batches": 1}, "at least 2")])
def test_mask_settings_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FeasibleMask(**kwargs)


def test_calibrated_rate_is_gain_over_the_noise_of_the_retain_change():
    """Δℓ_r drawn with a known spread σ = 3e-5 around a drift: β_abs = gain / σ (within the
    sampling error of a median absolute deviation over 400 draws), whatever the loss scale."""
    generator = torch.Generator().manual_seed(0)
    for scale in (1e-6, 1.0):  # the same noise in other loss units gives the same λ steps
        calibration = Calibration(gain=2.0, warmup=401)
        draws = (1e-5 + 3e-5 * torch.randn(401, generator=generator)) * scale
        result = {}
        for value in draws.tolist():
            calibration.observe_lambda(0.7)
            result = calibration.observe_increase(value)
        assert result["retain_increase_noise"] == pytest.approx(3e-5 * scale, rel=0.12)
        assert result["lambda_lr"] == pytest.approx(2.0 / (3e-5 * scale), rel=0.12)
        assert result["lambda_init"] == 0.7


def test_calibration_ignores_the_first_step_and_an_outlier():
    """The first step (from θ*, pure ESD) rises far more than the rest: it is left out, and the
    robust spread is not pulled by one large value later either."""
    calibration = Calibration(gain=1.0, warmup=6)
    for value in [9.0, 2.0, -1.0, 1.0, 50.0, -2.0]:
        calibration.observe_lambda(0.0 if calibration.steps else 99.0)  # step 1's λ* is left out too
        result = calibration.observe_increase(value)
    # steps 2–6: median 1, absolute deviations 1, 2, 0, 49, 3 → median 2 (with step 1: 3; σ: 20)
    assert result["retain_increase_noise"] == pytest.approx(MAD_TO_SIGMA * 2.0)
    assert result["lambda_init"] == 0.0


@pytest.mark.parametrize("name", ["eupmu", "eupmu-fast"])
def test_warm_up_takes_lambda_star_and_starts_lambda_there(name):
    """On the linear problem λ* = 0.5 at every step (ε = 0). During the warm-up λ is λ*, not 0
    and not the cap; afterwards λ starts at their median and, with SGD's Δℓ_r = 0.1 − 0.2λ = 0
    there, stays at 0.5."""
    settings = BalancerSettings(retain_budget=0.0, lambda_gain=1.0, lambda_warmup=4, lambda_max=10.0)
    lambdas, _, balancer = run_sgd(name, settings, steps=12)
    assert lambdas[:4] == pytest.approx([0.5] * 4)
    result = balancer.calibration.result
    assert result is not None and result["lambda_init"] == 0.5
    assert result["lambda_lr"] == settings.lambda_lr  # Δℓ_r never varied: the given rate, not 1/0
    assert lambdas[-1] == pytest.approx(0.5, abs=1e-3)
    fresh = build_balancer(name, settings)
    fresh.load_state_dict(json.loads(json.dumps(balancer.state_dict())))  # checkpoints store JSON
    assert fresh.state_dict() == balancer.state_dict()


def test_hold_puts_back_rejected_coordinates_and_kept_ones_the_optimiser_moved_uphill():
    """Retain gradient certainly positive everywhere. The test kept coordinates 0–2 for d and
    rejected 3. Adam then moved θ by u = (+1, −1, +1, −1): +1 raises ℓ_r (g_r·u > 0), so 0 and 2
    go back; 1 moved downhill and stays; 3 was rejected and goes back whatever u did."""
    samples = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.1, 1.1, 1.1, 1.1], [0.9, 0.9, 0.9, 0.9]])
    theta = torch.nn.Parameter(torch.tensor([1.0, -1.0, 1.0, -1.0]))  # after the step, from 0
    keep = torch.tensor([True, True, True, False])
    moved = FeasibleMask(delta=0.05, micro_batches=3).hold([theta], torch.zeros(4), keep, samples)
    assert theta.tolist() == [0.0, -1.0, 0.0, 0.0]
    assert moved.tolist() == [False, True, False, False]
