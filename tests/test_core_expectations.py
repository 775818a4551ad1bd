"""The core computations against expectations worked out by hand, each chosen so that a plausible
bug (swapped anchor and concept, η ignored, an inverted rule, FID of a set against itself, two
settings swapped on the way to the balancer) gives a different number."""

from __future__ import annotations

import pytest
import torch

from erase import losses
from eval.metrics.base import EvalContext, ModelImages
from eval.metrics.erasure import erasure_metrics
from eval.metrics.fid import fid_metrics, frechet_distance

# --- the negative-guidance target -------------------------------------------------------------
ANCHOR = torch.tensor([1.0, 0.0])  # ε*(x_t, a, t)
CONCEPT = torch.tensor([3.0, 2.0])  # ε*(x_t, c, t): the concept's direction c − a = (2, 2)


@pytest.mark.parametrize(("eta", "expected"), [(1.0, [-1.0, -2.0]), (2.0, [-3.0, -4.0]), (0.5, [0.0, -1.0])])
def test_negative_guidance_target_is_anchor_minus_eta_times_the_concept_direction(eta, expected):
    """a − η·(c − a): (1, 0) − η·(2, 2). Swapping a and c gives (3, 2) + η·(2, 2) instead."""
    target = losses.negative_guidance_target(ANCHOR, CONCEPT, eta)
    assert target.tolist() == expected


def test_negative_guidance_loss_pushes_the_prediction_away_from_the_concept():
    """At ε_θ = ε*(c) the loss is mean((c − target)²) = mean(((1 + η)(c − a))²) = 16 at η = 1 and
    36 at η = 2; its descent direction points against c − a (erasing, not strengthening)."""
    for eta, value in ((1.0, 16.0), (2.0, 36.0)):
        prediction = CONCEPT.clone().requires_grad_(True)
        loss = losses.negative_guidance_loss(prediction, ANCHOR, CONCEPT, eta)
        assert loss.item() == pytest.approx(value)
        loss.backward()
        assert float(-prediction.grad @ (CONCEPT - ANCHOR)) < 0


def test_anchor_and_retain_losses_are_mean_squared_distances():
    prediction = torch.tensor([2.0, 2.0])
    assert losses.anchor_loss(prediction, ANCHOR).item() == pytest.approx((1 + 4) / 2)
    assert losses.retain_loss(prediction, CONCEPT).item() == pytest.approx((1 + 0) / 2)
    assert losses.denoising_loss(prediction, torch.zeros(2)).item() == pytest.approx(4.0)


# --- UA / RA / IRA / CRA --------------------------------------------------------------------
def _model(entries, classes, styles=None) -> ModelImages:
    predictions = {"class": classes} | ({"style": styles} if styles else {})
    return ModelImages("run", None, entries, predictions)


def test_class_metrics_on_a_crafted_label_set():
    """Four forget rows (three), one still judged three → UA 3/4; five other rows, four right →
    RA 4/5. Inverting UA's rule gives 1/4, counting forget rows in RA gives 5/9, scoring RA as
    'not the erased class' gives 5/5: all differ."""
    truth = ["three"] * 4 + ["five", "five", "one", "one", "seven"]
    entries = [{"class": c} for c in truth]
    judged = ["three", "eight", "five", "one"] + ["five", "five", "one", "seven", "seven"]
    ctx = EvalContext([], {"class": "three"}, forget_rows=[0, 1, 2, 3])
    out = erasure_metrics(ctx, _model(entries, judged))
    assert out["UA"]["value"] == pytest.approx(0.75) and out["UA"]["n"] == 4
    assert out["RA"]["value"] == pytest.approx(0.8) and out["RA"]["n"] == 5


def test_style_metrics_on_a_crafted_label_set():
    """Erasing style red. Forget rows 0–2 (red); judged styles: red, plain, blue → UA 2/3.
    Rows 3–7 have other styles, 3 of 5 judged right → IRA 3/5. Digits are right on 5 of all 8 rows
    → CRA 5/8, and on 1 of the 3 red rows → CRA_erased_style 1/3."""
    styles = ["red", "red", "red", "plain", "plain", "blue", "blue", "green"]
    classes = ["one", "two", "three", "one", "two", "three", "one", "two"]
    entries = [{"class": c, "style": s} for c, s in zip(classes, styles, strict=True)]
    judged_styles = ["red", "plain", "blue", "plain", "blue", "blue", "red", "green"]
    judged_classes = ["one", "five", "five", "one", "two", "three", "one", "five"]
    ctx = EvalContext([], {"style": "red"}, forget_rows=[0, 1, 2])
    out = erasure_metrics(ctx, _model(entries, judged_classes, judged_styles))
    assert out["UA"]["value"] == pytest.approx(2 / 3, abs=1e-4)
    assert out["IRA"]["value"] == pytest.approx(3 / 5, abs=1e-4)
    assert out["CRA"]["value"] == pytest.approx(5 / 8, abs=1e-4)
    assert out["CRA_erased_style"]["value"] == pytest.approx(1 / 3, abs=1e-4)


# --- FID ----------------------------------------------------------------------------------------
class Identity:
    """Features = the 'images' themselves (rows of a 2-D point cloud)."""

    feature_name = "identity (test)"
    image_size = None

    def features(self, images):
        return images.reshape(images.shape[0], -1).double()


def test_fid_of_a_set_and_its_shifted_copy_is_the_squared_shift():
    """Same covariance, means apart by s: FID = ‖s‖² exactly (here 3² + 4² = 25); FID(A, A) = 0."""
    points = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))
    shift = torch.tensor([3.0, 4.0])
    assert frechet_distance(Identity(), points, points + shift) == pytest.approx(25.0, rel=1e-6)
    assert frechet_distance(Identity(), points, points) == pytest.approx(0.0, abs=1e-6)


def test_fid_of_two_gaussians_matches_the_closed_form():
    """N(0, I) against N((1, 2), 4·I) in 2-D: ‖μ‖² + Tr(I + 4I − 2·(4I)^½) = 5 + 2·(1 + 4 − 4) = 7."""
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(40_000, 2, generator=generator)
    b = torch.tensor([1.0, 2.0]) + 2.0 * torch.randn(40_000, 2, generator=generator)
    assert frechet_distance(Identity(), a, b) == pytest.approx(7.0, abs=0.1)


def test_fid_vs_base_compares_the_run_with_the_base_not_with_itself():
    """The metric's wiring: the run's retain images against the base's, rows by the retain list."""
    points = torch.randn(64, 2, generator=torch.Generator().manual_seed(2))
    entries = [{"class": "x"}] * 64
    base = ModelImages("base", None, entries, is_base=True)
    run = ModelImages("run", None, entries)
    retain = list(range(4, 64))
    ctx = EvalContext([base, run], {"class": "x"}, forget_rows=[0, 1, 2, 3], features=Identity())
    ctx.image_cache[("base", tuple(retain), None)] = points[4:]
    ctx.image_cache[("run", tuple(retain), None)] = points[4:] + torch.tensor([0.0, 2.0])
    out = fid_metrics(ctx, run)
    assert out["FID_vs_base"]["value"] == pytest.approx(4.0, rel=1e-6)
    assert out["FID_vs_base"]["n"] == 60
