"""The core computations against expectations worked out by hand, each chosen so that a plausible
bug (swapped anchor and concept, η ignored, an inverted rule, FID of a set against itself, two
settings swapped on the way to the balancer) gives a different number."""

from __future__ import annotations

import pytest
import torch

from erase import losses
from eval.concepts import rows_showing
from eval.images import load_images
from eval.metrics import METRICS
from eval.metrics import value as metric_value
from eval.metrics.base import EvalContext, ModelImages
from eval.metrics.clip_score import clip_score, clip_score_metrics
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
    ctx = EvalContext([], [{"class": "three"}], forget_rows=[0, 1, 2, 3])
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
    ctx = EvalContext([], [{"style": "red"}], forget_rows=[0, 1, 2])
    out = erasure_metrics(ctx, _model(entries, judged_classes, judged_styles))
    assert out["UA"]["value"] == pytest.approx(2 / 3, abs=1e-4)
    assert out["IRA"]["value"] == pytest.approx(3 / 5, abs=1e-4)
    assert out["CRA"]["value"] == pytest.approx(5 / 8, abs=1e-4)
    assert out["CRA_erased_style"]["value"] == pytest.approx(1 / 3, abs=1e-4)


def test_several_concepts_each_get_their_ua_and_the_rest_is_retained():
    """Erasing three and seven at once. Three's rows (0–2): judged three once → UA_three 2/3;
    seven's rows (3–4): judged seven once → UA_seven 1/2; together UA 3/5. RA counts only the
    other digits (rows 5–8, 3 of 4 right). Crediting a seven judged as three, or counting the
    erased digits' rows in RA, gives other values."""
    truth = ["three"] * 3 + ["seven"] * 2 + ["one", "one", "five", "five"]
    judged = ["three", "seven", "eight"] + ["seven", "three"] + ["one", "one", "five", "two"]
    entries = [{"class": c} for c in truth]
    ctx = EvalContext([], [{"class": "three"}, {"class": "seven"}], forget_rows=[0, 1, 2, 3, 4])
    out = erasure_metrics(ctx, _model(entries, judged))
    assert out["UA_three"]["value"] == pytest.approx(2 / 3, abs=1e-4) and out["UA_three"]["n"] == 3
    assert out["UA_seven"]["value"] == pytest.approx(1 / 2) and out["UA_seven"]["n"] == 2
    assert out["UA"]["value"] == pytest.approx(3 / 5) and out["UA"]["n"] == 5
    assert out["RA"]["value"] == pytest.approx(3 / 4) and out["RA"]["n"] == 4


def test_a_digit_and_a_style_at_once():
    """Erasing three and red. A red three (row 0) is erased only if neither is recognised; the
    other digits' RA includes red ones; the other styles' IRA excludes red but includes a plain
    three (its style is not erased)."""
    rows = [("three", "red"), ("three", "plain"), ("one", "red"), ("one", "plain"), ("five", "plain")]
    judged = [("one", "red"), ("one", "plain"), ("one", "plain"), ("one", "blue"), ("five", "plain")]
    entries = [{"class": c, "style": s} for c, s in rows]
    ctx = EvalContext([], [{"class": "three"}, {"style": "red"}], forget_rows=[0, 1, 2])
    out = erasure_metrics(ctx, _model(entries, [c for c, _ in judged], [s for _, s in judged]))
    assert out["UA"]["value"] == pytest.approx(2 / 3, abs=1e-4)  # row 0 still red
    assert out["UA_three"]["value"] == 1.0 and out["UA_three"]["n"] == 2
    assert out["UA_red"]["value"] == 0.5 and out["UA_red"]["n"] == 2
    assert out["RA"]["value"] == 1.0 and out["RA"]["n"] == 3  # rows 2, 3, 4
    assert out["IRA"]["value"] == pytest.approx(2 / 3, abs=1e-4) and out["IRA"]["n"] == 3  # rows 1, 3 (blue), 4
    # CRA: the class kept across styles, over the rows whose class is not erased (a three judged
    # "one" is erased, not a class lost): rows 2–4, all right; under red, row 2
    assert out["CRA"]["value"] == 1.0 and out["CRA"]["n"] == 3
    assert out["CRA_erased_style"]["value"] == 1.0 and out["CRA_erased_style"]["n"] == 1


def test_a_two_label_concept_keeps_each_label_elsewhere():
    """Erasing red threes (one concept, two labels). A perfect erasure: the red three is judged
    a plain one, and everything else is drawn as asked, plain threes and red fives included. RA
    and IRA are over every row but the red three's, so both are 100%; leaving out every three
    from RA or every red row from IRA would drop the very images meant to be kept."""
    rows = [("three", "red"), ("three", "plain"), ("five", "red"), ("five", "plain")]
    judged = [("one", "plain"), ("three", "plain"), ("five", "red"), ("five", "plain")]
    entries = [{"class": c, "style": s} for c, s in rows]
    ctx = EvalContext([], [{"class": "three", "style": "red"}], forget_rows=[0])
    out = erasure_metrics(ctx, _model(entries, [c for c, _ in judged], [s for _, s in judged]))
    assert out["UA_class"]["value"] == 1.0 and out["UA_style"]["value"] == 1.0
    assert (out["RA"]["value"], out["RA"]["n"]) == (1.0, 3) and (out["IRA"]["value"], out["IRA"]["n"]) == (1.0, 3)
    assert (out["CRA"]["value"], out["CRA"]["n"]) == (1.0, 3)


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
    ctx = EvalContext([base, run], [{"class": "x"}], forget_rows=[0, 1, 2, 3], features=Identity())
    ctx.image_cache[("base", tuple(retain), None)] = points[4:]
    ctx.image_cache[("run", tuple(retain), None)] = points[4:] + torch.tensor([0.0, 2.0])
    out = fid_metrics(ctx, run)
    assert out["FID_vs_base"]["value"] == pytest.approx(4.0, rel=1e-6)
    assert out["FID_vs_base"]["n"] == 60 and "biased" not in out["FID_vs_base"]["definition"]  # 60 points in 2-d
    ctx.image_cache[("run", tuple(retain), None)] = torch.randn(60, 80, generator=torch.Generator().manual_seed(3))
    ctx.image_cache[("base", tuple(retain), None)] = torch.randn(60, 80, generator=torch.Generator().manual_seed(4))
    few = fid_metrics(ctx, run)["FID_vs_base"]["definition"]  # 60 images in 80-d: the report says so
    assert "60 images in a 80-d space: biased upwards" in few


def test_the_base_images_features_are_extracted_once_for_every_run_scored_against_them():
    """Several runs against one base: the base's features once, each run's once, and each FID
    exactly what a fresh comparison of the two sets gives (the cached sums are the same sums)."""

    class Counting(Identity):
        seen = 0

        def features(self, images):
            Counting.seen += len(images)
            return super().features(images)

    entries = [{"class": "x"}] * 64
    base = ModelImages("base", None, entries, is_base=True)
    runs = [ModelImages(f"run{i}", None, entries) for i in range(3)]
    retain = list(range(4, 64))
    ctx = EvalContext([base, *runs], [{"class": "x"}], forget_rows=[0, 1, 2, 3], features=Counting())
    generator = torch.Generator().manual_seed(5)
    for model in [base, *runs]:
        ctx.image_cache[(model.name, tuple(retain), None)] = torch.randn(60, 3, generator=generator)
    values = [fid_metrics(ctx, run)["FID_vs_base"]["value"] for run in runs]
    assert Counting.seen == 1 + 60 + 3 * 60  # the feature-size probe, the base, each run
    base_images = ctx.image_cache[("base", tuple(retain), None)]
    fresh = [frechet_distance(Identity(), base_images, ctx.image_cache[(r.name, tuple(retain), None)]) for r in runs]
    assert values == [metric_value(v, 60, "")["value"] for v in fresh] and len(set(values)) == 3


def test_no_forget_rows_gives_no_ua_rather_than_a_number():
    """A prompt list without the erased concept has nothing to measure UA on: None, n = 0."""
    entries = [{"class": "five"}, {"class": "one"}]
    out = erasure_metrics(EvalContext([], [{"class": "three"}], forget_rows=[]), _model(entries, ["five", "two"]))
    assert out["UA"]["value"] is None and out["UA"]["n"] == 0
    assert out["RA"]["value"] == 0.5


def test_rows_showing_needs_every_erased_label():
    entries = [{"class": "three", "style": "red"}, {"class": "three", "style": "blue"}, {"class": "one"}, {}]
    assert rows_showing(entries, [{"class": "three"}]) == [0, 1]
    assert rows_showing(entries, [{"class": "three", "style": "red"}]) == [0]
    assert rows_showing(entries, [{"style": "green"}]) == []
    assert rows_showing(entries, [{"style": "blue"}, {"class": "one"}]) == [1, 2]  # any of several


def test_a_metric_value_is_rounded_and_carries_its_definition():
    assert metric_value(2 / 3, 3, "share", percent=True) == {
        "value": 0.6667,
        "definition": "share",
        "n": 3,
        "percent": True,
    }
    assert metric_value(None, 0, "share")["value"] is None


def test_every_metric_module_is_registered():
    assert {"erasure", "fid", "clip_score"} <= set(METRICS)
    assert METRICS["erasure"] is erasure_metrics and METRICS["fid"] is fid_metrics


# --- CLIP score -----------------------------------------------------------------------------------
class UnitVectors:
    """A stand-in CLIP: images and prompts map to given unit vectors, so cosines are known."""

    architecture = "unit vectors (test)"
    image_size = 2  # images are read at this size, as a real encoder's are

    def __init__(self, text: dict[str, list[float]]):
        self.text = text

    def encode_image(self, images):
        return torch.nn.functional.normalize(images.reshape(images.shape[0], -1).float(), dim=-1)

    def encode_text(self, prompts):
        return torch.nn.functional.normalize(torch.tensor([self.text[p] for p in prompts]), dim=-1)


def test_clip_score_is_100_times_the_clamped_cosine_per_image():
    """cos = 1, 0.6, −0.8 → 100, 60, 0 (negative cosines count as 0, as torchmetrics does)."""
    encoder = UnitVectors({"a": [1.0, 0.0], "b": [0.6, 0.8], "c": [0.0, -1.0]})
    images = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8]])
    assert clip_score(encoder, images, ["a", "b", "c"]).tolist() == pytest.approx([100.0, 60.0, 0.0])


def test_clip_score_metric_averages_over_the_retain_rows_of_the_model_read(tmp_path):
    """Rows 0–1 are forget rows and must not count; rows 2–3 score 100 and 60 → 80. Images are
    read from the model's own folder by the manifest's file names."""
    from PIL import Image

    colours = {"r.png": (255, 0, 0), "g.png": (0, 255, 0)}
    for name, colour in colours.items():
        Image.new("RGB", (2, 2), colour).save(tmp_path / name)
    entries = [{"prompt": "x", "file": "g.png"}] * 2 + [
        {"prompt": "red", "file": "r.png"},
        {"prompt": "reddish", "file": "r.png"},
    ]
    model = ModelImages("run", tmp_path, entries)
    assert model.paths([2, 0]) == [tmp_path / "r.png", tmp_path / "g.png"]
    unit = torch.nn.functional.normalize(load_images([tmp_path / "r.png"]).reshape(-1), dim=0)
    other = torch.randn(unit.numel(), generator=torch.Generator().manual_seed(0))
    other = torch.nn.functional.normalize(other - other.dot(unit) * unit, dim=0)  # cos 0 with the image
    unit, reddish = unit.tolist(), (0.6 * unit + 0.8 * other).tolist()
    ctx = EvalContext(
        [model], [{"class": "x"}], forget_rows=[0, 1], clip=UnitVectors({"red": unit, "reddish": reddish})
    )
    out = clip_score_metrics(ctx, model)["CLIP_score"]
    assert out["value"] == pytest.approx(80.0, abs=1e-3) and out["n"] == 2


def test_clip_score_reads_images_of_several_sizes_at_the_encoders_size(tmp_path):
    """A prompt list may give rows their own height and width: the images are read at the
    encoder's input size, not stacked as they are (which fails on mixed sizes)."""
    from PIL import Image

    Image.new("RGB", (2, 2), (255, 0, 0)).save(tmp_path / "small.png")
    Image.new("RGB", (6, 4), (255, 0, 0)).save(tmp_path / "wide.png")
    entries = [{"prompt": "red", "file": "small.png"}, {"prompt": "red", "file": "wide.png"}]
    model = ModelImages("run", tmp_path, entries)
    unit = torch.nn.functional.normalize(load_images([tmp_path / "small.png"]).reshape(-1), dim=0).tolist()
    ctx = EvalContext([model], [{"class": "x"}], forget_rows=[], clip=UnitVectors({"red": unit}))
    out = clip_score_metrics(ctx, model)["CLIP_score"]
    assert out["value"] == pytest.approx(100.0, abs=1e-3) and out["n"] == 2


def test_images_are_read_at_the_size_asked_for_and_read_once(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8), (255, 255, 255)).save(tmp_path / "w.png")
    model = ModelImages("run", tmp_path, [{"file": "w.png"}, {"file": "w.png"}])
    ctx = EvalContext([model], [], forget_rows=[])
    images = ctx.images(model, [0, 1], 4)
    assert images.shape == (2, 3, 4, 4) and torch.allclose(images, torch.ones(2, 3, 4, 4))
    assert ctx.images(model, [0, 1], 4) is images  # cached: FID and CLIP score share one read
    assert ctx.images(model, [1], None).shape == (1, 3, 8, 8)
