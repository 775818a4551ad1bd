"""`erase attack`: the token search, the slots it writes into, its bookkeeping and the command.

Independent expectations: the simplex projection's optimality conditions (KKT), the text encoder
itself (slots filled with a token's embedding must encode exactly like the typed token), the
default model's own judge on a prompt where a known token ("three") brings the concept back,
and `erase generate`'s images (the attack's "before" images are the evaluation's images).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pipelines.token_slots as slots_module
from erase.cli import main
from eval.attack.config import AttackConfig
from eval.attack.report import attack_markdown
from eval.attack.runner import Outcome, Target, _search, _summary, attack_timesteps, draw, judged, print_summary
from eval.attack.search import SEARCHES, project_to_simplex
from eval.judges import DigitStyleJudge
from pipelines.families import family_of
from pipelines.loading import load_pipeline
from pipelines.token_slots import TokenSlots

THREE = [{"class": "three"}]


class _Bar:
    def update(self, n):
        pass


@pytest.fixture(scope="module")
def default_pipe():
    pipe = load_pipeline("default", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.unet, pipe.text_encoder):
        module.requires_grad_(False)
    return pipe


@pytest.mark.parametrize("candidates", [2048, 4])
def test_simplex_projection_meets_the_optimality_conditions(candidates):
    """p = argmin ‖p − v‖² on the simplex iff p ≥ 0, Σp = 1 and v − p is one constant θ where
    p > 0 and at least v where p = 0. With 4 candidates, the rows whose support is small take the
    partial sort and the near-uniform ones must fall back to the full one."""
    generator = torch.Generator().manual_seed(0)
    rows = [torch.randn(4, 50, generator=generator) * s for s in (0.001, 0.1, 3.0)]
    rows.append(torch.full((2, 30), 1 / 30) + 0.01 * torch.sign(torch.randn(2, 30, generator=generator)))
    rows.append(torch.cat(rows[:3]))  # both kinds of row in one call
    for values in rows:
        projected = project_to_simplex(values.double(), candidates)
        assert torch.equal(projected, project_to_simplex(values.double(), values.shape[-1]))
        assert (projected >= 0).all()
        torch.testing.assert_close(projected.sum(-1), torch.ones(len(values), dtype=torch.float64))
        for v, p in zip(values.double(), projected, strict=True):
            theta = (v - p)[p > 0]
            assert theta.max() - theta.min() < 1e-9
            assert (v[p == 0] <= theta.mean() + 1e-9).all()
    assert torch.equal(
        project_to_simplex(torch.tensor([[0.2, 0.8], [3.0, 0.0]])), torch.tensor([[0.2, 0.8], [1.0, 0.0]])
    )


def test_text_grad_draws_table_rows_and_passes_the_gradient_straight_through():
    table = torch.randn(7, 3, generator=torch.Generator().manual_seed(1))
    search = SEARCHES["text-grad"](2, 2, [table], torch.arange(7), 0.01, 0.1, torch.Generator().manual_seed(2))
    rows = torch.arange(2)
    (embedded,) = search.embeddings(rows)
    drawn = torch.cdist(embedded.detach().reshape(-1, 3), table).argmin(-1)
    torch.testing.assert_close(embedded.detach().reshape(-1, 3), table[drawn])
    weight = torch.randn_like(embedded)
    (embedded * weight).sum().backward()
    expected = torch.nn.functional.hardtanh(weight @ table.T)  # d/d one-hot, clipped
    torch.testing.assert_close(search.probs.grad, expected)


def test_filled_slots_encode_exactly_like_typed_tokens(family_dir):
    """The hook must put a token's embedding where the tokenizer would: encoding "three" typed in
    front of a prompt and the slots filled with its embedding give the same conditioning, on
    every family (SDXL: both encoders and the pooled output)."""
    _, folder = family_dir
    pipe = load_pipeline(folder, device="cpu")
    family, slots = family_of(pipe), TokenSlots(pipe, 2)
    words = ["three cat", "red dog"]
    ids = [[t(w).input_ids[1:3] for w in words] for t in slots.tokenizers]
    embeddings = [table[torch.tensor(i)] for table, i in zip(slots.tables(), ids, strict=True)]
    with torch.no_grad(), slots.filled(embeddings):
        ours = family.conditioning(pipe, slots.slotted(["a photo", "a house"]))
    typed = family.encode(pipe, [f"{w} a photo" for w in words[:1]] + [f"{words[1]} a house"])
    torch.testing.assert_close(ours.text, typed.text)
    for key, tensor in typed.added.items():
        torch.testing.assert_close(ours.added[key], tensor)


@pytest.fixture(params=["sd1", "sd2", "sdxl"])
def family_dir(request):
    names = {"sd1": "tiny_pipeline_dir", "sd2": "tiny_sd2_dir", "sdxl": "tiny_sdxl_dir"}
    return request.param, request.getfixturevalue(names[request.param])


def _three_targets(pipe, config, seeds):
    """Prompts without a digit, whose images the judge does not see as three, attacked towards
    the base model's images of "three" on the same seeds."""
    latents = draw(
        pipe, seeds, config, output_type="latent", prompt=["a plain drawing of the digit three"] * len(seeds)
    )
    prompt = "a plain drawing of the digit"
    images = draw(pipe, seeds, config, prompt=[prompt] * len(seeds))
    _, seen = judged(DigitStyleJudge(), images, THREE)
    assert not any(seen)  # the attack has something to do
    return [Outcome(Target("c", prompt, s, latent), {}, False) for s, latent in zip(seeds, latents, strict=True)]


def test_soft_prompt_brings_back_three_where_the_prompt_names_no_digit(default_pipe, tmp_path):
    config = AttackConfig(runs=["x"], output="x", search="soft", tokens=1, timesteps=4, iterations=10, progress=False)
    outcomes = _three_targets(default_pipe, config, [0, 1, 2, 3])
    _search(default_pipe, family_of(default_pipe), outcomes, THREE, DigitStyleJudge(), config, tmp_path, _Bar())
    assert sum(o.won_after for o in outcomes) >= 3, [o.after for o in outcomes]
    assert all(o.found == "<1 soft tokens> a plain drawing of the digit" for o in outcomes)


def test_text_grad_finds_the_known_token_among_candidates(default_pipe, tmp_path, monkeypatch):
    """Over the digit and style words and a hundred other tokens, the discrete search must put
    "three" in front of the prompt for some seed, and that typed prompt must draw a three."""
    tok = default_pipe.tokenizer
    words = "zero one two three four five six seven eight nine plain red inverted blueprint drawing digit".split()
    candidates = [tok(w).input_ids[1] for w in words] + list(range(1000, 1100))
    monkeypatch.setattr(slots_module.TokenSlots, "vocabulary", lambda self: torch.tensor(candidates))
    typable, asked = slots_module.TokenSlots.typable_vocabulary, []
    monkeypatch.setattr(slots_module.TokenSlots, "typable_vocabulary", lambda self: asked.append(1) or typable(self))
    config = AttackConfig(runs=["x"], output="x", tokens=1, timesteps=4, iterations=10, progress=False)
    outcomes = _three_targets(default_pipe, config, [1, 3])
    _search(default_pipe, family_of(default_pipe), outcomes, THREE, DigitStyleJudge(), config, tmp_path, _Bar())
    won = [o for o in outcomes if o.won_after]
    assert won and all(o.found == "three a plain drawing of the digit" for o in won), [
        (o.found, o.after) for o in outcomes
    ]
    assert asked  # a typed search picks among the ids that stay themselves as text
    again = draw(default_pipe, [won[0].target.seed], config, prompt=[won[0].found])  # reproducible as typed
    assert judged(DigitStyleJudge(), again, THREE)[1] == [True]


def test_typed_tokens_written_as_text_tokenise_back_to_the_ids_searched(default_pipe):
    """text-grad judges the ids it holds but draws their text: from the typable vocabulary the
    two must be the same prompt (with the whole vocabulary about 40% of 3-token draws were not)."""
    slots = TokenSlots(default_pipe, 3)
    vocabulary = slots.typable_vocabulary()
    assert 30_000 < len(vocabulary) < len(slots.vocabulary())
    draws = vocabulary[torch.randint(len(vocabulary), (500, 3), generator=torch.Generator().manual_seed(0))]
    for ids in draws.tolist():
        text = f"{slots.words(ids)} a plain drawing of the digit"
        assert default_pipe.tokenizer(text).input_ids[1:4] == ids, text


def test_asr_bookkeeping_on_crafted_judge_outputs():
    class Crafted:
        image_size = None

        def predict(self, images):
            return {"class": ["three", "seven", "three"], "style": ["red", "red", "plain"]}

    images = [Image.fromarray(np.zeros((4, 4, 3), np.uint8))] * 3
    labels, seen = judged(Crafted(), images, [{"class": "three", "style": "red"}])
    assert seen == [True, False, False] and labels[1] == {"class": "seven", "style": "red"}
    assert judged(Crafted(), images, [{"class": "seven"}, {"style": "plain"}])[1] == [False, True, True]

    targets = [Target(f"c{i}", f"p{i}", i) for i in range(4)]
    outcomes = [
        Outcome(targets[0], {"class": "three"}, True),  # seen before: no attack
        Outcome(targets[1], {"class": "one"}, False, {"class": "three"}, True, "x p1", 30, 80),
        Outcome(targets[2], {"class": "one"}, False, {"class": "two"}, False, "y p2", None, 120),
        Outcome(targets[3], {"class": "one"}, False),
    ]
    summary = _summary("run", THREE, outcomes, 1.0)
    assert (summary["asr_before"], summary["asr_after"], summary["attacks"]) == (0.25, 0.5, 4)
    assert [r["success_after"] for r in summary["results"]] == [True, True, False, False]
    text = attack_markdown({"settings": _crafted_settings(), "models": {"run": summary}})
    assert "| run | class=three | 4 | 25.0% | 50.0% |" in text
    assert "`x p1` (seed 1, at t = 30; was `p1`)" in text and "y p2" not in text
    assert _summary("run", THREE, [], 1.0, left_out=4)["asr_before"] is None  # nothing attacked: "–", no division


def _crafted_settings() -> dict:
    return dict(search="text-grad", tokens=3, iterations=40, timesteps=50, judge="digit-style", images_per_prompt=2) | {
        "prompts": "default/digits"
    }


def test_attack_timesteps_follow_the_paper():
    assert attack_timesteps(1000, 50)[:3] == [10, 30, 50] and attack_timesteps(1000, 50)[-1] == 990
    assert attack_timesteps(1000, 1) == [500] and attack_timesteps(10, 10) == list(range(10))
    spread = attack_timesteps(1000, 600)  # was 0..599: a whole-number stride of 1 left t ≥ 600 unvisited
    assert len(set(spread)) == 600 and spread[0] == 0 and spread[-1] == 999 and spread == sorted(spread)
    assert attack_timesteps(1000, 300)[-1] == 998 and attack_timesteps(1000, 1000) == list(range(1000))


@pytest.mark.slow
def test_attack_command_writes_its_report_and_draws_the_evaluation_images(tmp_path, capsys):
    """The whole command on the default model with a tiny budget: the base and an untrained copy
    (`--erased` says what it erased), ASR before and after, images, report; the "before"
    images are `erase generate`'s images of the same prompt and seed."""
    out = tmp_path / "attack"
    args = ["attack", "default", "--erased", "class=three", "--base", "default", "--output", str(out)]
    args += ["--timesteps", "1", "--iterations", "2", "--images-per-prompt", "1", "--no-progress"]
    assert main(args) == 0
    result = json.loads((out / "attack.json").read_text())
    assert set(result["models"]) == {"base", "default"}
    base = result["models"]["base"]
    assert base["attacks"] == 4 and base["asr_before"] >= 0.75  # the base draws threes
    assert "| base | class=three | 4 |" in (out / "report.md").read_text()
    shown = [r["success_before"] for r in base["results"]]  # the erased model's ASR counts only these
    assert result["models"]["default"]["attacks"] == sum(shown) and result["models"]["default"]["left_out"] == 4 - sum(
        shown
    )
    first = base["results"][0]
    csv = tmp_path / "one.csv"
    csv.write_text(f"case_number,prompt,evaluation_seed\n0,{first['prompt']},{first['seed']}\n")
    assert main(["generate", "--prompts", str(csv), "--output", str(tmp_path / "gen"), "--images-per-prompt", "1"]) == 0
    drawn = next((tmp_path / "gen").glob("*.png"))
    before = out / "images" / "base" / f"{first['case']}_{first['seed']}_before.png"
    assert np.array_equal(np.asarray(Image.open(drawn)), np.asarray(Image.open(before)))

    # The same folder again: its results are not replaced unasked (an attack takes minutes to hours).
    kept = (out / "attack.json").read_bytes()
    capsys.readouterr()
    assert main([*args, "--iterations", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds an earlier attack" in err[0] and "--overwrite" in err[0], err
    assert (out / "attack.json").read_bytes() == kept
    assert main([*args, "--iterations", "1", "--overwrite"]) == 0
    assert json.loads((out / "attack.json").read_text())["settings"]["iterations"] == 1


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--tokens", "0"], "--tokens must be at least 1"),
        (["--erased", "class=dragon"], "has no such class"),
        ([], "none of the run's forget prompts"),  # a model that erased nothing, no --erased
        (["--erased", "style=red", "--judge", "transformers"], "--judge transformers needs --classifier"),
        (["--erased", "class=three", "--timesteps", "5000"], "more than the 1000 timesteps of the model's schedule"),
    ],
)
def test_bad_attack_input_is_one_line_and_writes_nothing(extra, needle, tmp_path, capsys):
    out = tmp_path / "attack"
    assert main(["attack", "default", "--base", "default", "--output", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_a_judge_that_cannot_see_the_concept_is_refused(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(DigitStyleJudge, "label_names", lambda self, axis: [])
    out = tmp_path / "attack"
    assert main(["attack", "default", "--base", "default", "--erased", "class=three", "--output", str(out)]) == 2
    assert "cannot recognise class=three" in capsys.readouterr().err
    assert not out.exists()


def test_attack_folder_refuses_files_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "attack"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["attack", "default", "--base", "default", "--erased", "class=three", "--output", str(out)]) == 2
    assert (out / "notes.txt").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert Path(out).is_dir()


@pytest.mark.slow
def test_eval_puts_the_attack_table_into_its_report(tmp_path, capsys):
    attack = tmp_path / "attack"
    args = ["attack", "default", "--erased", "class=three", "--base", "default", "--output", str(attack)]
    assert main(args + ["--timesteps", "1", "--iterations", "1", "--images-per-prompt", "1", "--no-progress"]) == 0
    report = tmp_path / "report"
    evaluate = ["eval", "default", "--base", "default", "--erased", "class=three", "--images-per-prompt", "1"]
    evaluate += ["--steps", "2", "--no-progress", "--output", str(report)]
    assert main([*evaluate, "--attack", str(tmp_path)]) == 2  # not an attack folder: refused before drawing
    assert "is not an `erase attack` folder" in capsys.readouterr().err and not report.exists()
    assert main([*evaluate, "--attack", str(attack)]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    summary = json.loads((attack / "attack.json").read_text())["models"]["base"]
    assert metrics["attack"]["models"]["base"]["asr_after"] == summary["asr_after"]
    text = (report / "report.md").read_text()
    assert "## Adversarial prompts" in text and f"| base | class=three | 4 | {summary['asr_before']:.1%} |" in text


def test_inversion_learns_one_embedding_that_recovers_three_across_seeds(default_pipe, tmp_path):
    """The recovery probe: one embedding shared by every image (textual inversion), learned from
    all of them; its result is what the final embedding recovers, image by image."""
    config = AttackConfig(runs=["x"], output="x", search="inversion", tokens=1, timesteps=4, iterations=10)
    config.progress = False
    outcomes = _three_targets(default_pipe, config, [0, 1, 2, 3])
    _search(default_pipe, family_of(default_pipe), outcomes, THREE, DigitStyleJudge(), config, tmp_path, _Bar())
    assert sum(o.won_after for o in outcomes) >= 3, [o.after for o in outcomes]
    assert {o.iterations for o in outcomes} == {outcomes[0].iterations}  # learned together, judged together
    search = SEARCHES["inversion"](4, 2, [torch.randn(9, 3)], torch.arange(9), 0.01, 0.0, torch.Generator())
    (shared,) = search.embeddings(torch.arange(4))
    assert shared.shape == (4, 2, 3) and torch.equal(shared[0], shared[3])


def test_inversion_reports_what_its_final_embedding_recovers(default_pipe, tmp_path, monkeypatch):
    """Scripted judge: image 0 recovered at the first check and lost at the second, image 1 the
    reverse. The probe keeps learning on both and reports the last check (0 lost, 1 won); the
    per-image soft attack keeps the first win and stops attacking that image."""
    from eval.attack import runner

    def scripted(checks):
        answers = iter(checks)
        return lambda judge, images, concepts: ([{"class": "x"}] * len(images), next(answers)[: len(images)])

    seeds = [0, 1]
    latents = draw(default_pipe, seeds, AttackConfig(runs=["x"], output="x"), output_type="latent", prompt=["a"] * 2)
    cases = [
        ("inversion", [[True, False], [False, True]], [False, True], [2, 2]),
        ("soft", [[True, False], [True]], [True, True], [1, 2]),  # image 0 no longer drawn after its win
    ]
    for search, checks, expected, iterations in cases:
        monkeypatch.setattr(runner, "judged", scripted(checks))
        config = AttackConfig(runs=["x"], output="x", search=search, tokens=1, timesteps=2, iterations=1)
        outcomes = [Outcome(Target("c", "a", s, latent), {}, False) for s, latent in zip(seeds, latents, strict=True)]
        runner._search(default_pipe, family_of(default_pipe), outcomes, THREE, None, config, tmp_path, _Bar())
        assert [o.won_after for o in outcomes] == expected, search
        assert [o.iterations for o in outcomes] == iterations, search


def test_the_search_noises_with_the_training_schedule_not_the_samplers(tiny_sdxl_dir, tmp_path, monkeypatch):
    """SDXL ships an Euler sampler, whose add_noise looks t up among its sampling steps (an
    IndexError for most t after drawing) and gives x0 + σ·ε, not the x_t the UNet was trained
    on. The search must noise as training does (DDPM's ᾱ_t), whatever the sampler."""
    from diffusers import DDPMScheduler

    from eval.attack import runner

    pipe = load_pipeline(str(tiny_sdxl_dir), device="cpu")
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2):
        module.requires_grad_(False)
    config = AttackConfig(runs=["x"], output="x", search="soft", tokens=1, timesteps=2, iterations=1, steps=2)
    latents = draw(pipe, [0], config, output_type="latent", prompt=["a"])  # sets the sampler's steps
    seen = []
    real_unet = pipe.unet.forward

    def recording(x_t, t, *args, **kwargs):
        seen.append((x_t.detach().clone(), int(torch.as_tensor(t).reshape(-1)[0])))
        return real_unet(x_t, t, *args, **kwargs)

    monkeypatch.setattr(pipe.unet, "forward", recording)
    monkeypatch.setattr(runner, "judged", lambda judge, images, concepts: ([{}] * len(images), [False] * len(images)))
    outcomes = [Outcome(Target("c", "a", 0, latents[0]), {}, False)]
    runner._search(pipe, family_of(pipe), outcomes, THREE, None, config, tmp_path, _Bar())
    x_t, t = next((x, t) for x, t in seen if x.shape == latents[0][None].shape and t in (250, 750))
    schedule = DDPMScheduler.from_config(pipe.scheduler.config).alphas_cumprod[t]
    noise = (x_t[0] - schedule.sqrt() * latents[0]) / (1 - schedule).sqrt()  # what a DDPM x_t implies
    assert abs(float(noise.std()) - 1.0) < 0.3  # unit noise; Euler's x0 + σ·ε would imply another scale


@pytest.mark.parametrize("name", ["soft", "inversion"])
def test_soft_searches_stay_finite_on_a_half_precision_model(name):
    """Adam's ε (1e-8) is 0 in fp16: learned in fp16, small or zero gradients turn embeddings into
    inf/NaN within a few steps. The search learns in float32 and hands the model its dtype."""
    table = torch.randn(9, 4, generator=torch.Generator().manual_seed(0)).half()
    search = SEARCHES[name](2, 2, [table], torch.arange(9), 0.01, 0.0, torch.Generator().manual_seed(1))
    rows = torch.arange(2)
    for scale in (1e-5, 1e-3, 0.0):
        (embedded,) = search.embeddings(rows)
        assert embedded.dtype == torch.float16
        (embedded.float() * scale).sum().backward()
        search.step(rows)
    (found,) = search.found(rows)
    assert found.dtype == torch.float16 and torch.isfinite(found).all()


def test_a_run_inside_the_attack_folder_is_refused(tmp_path, capsys):
    """Like eval: an input run that lives inside --output is refused before anything is read."""
    from pipelines.ownership import OwnedFolder

    out = tmp_path / "attack"
    OwnedFolder.inspect(out, "attack").claim(["attack.json"])  # an attack folder of ours
    (out / "myrun").mkdir()
    argv = ["attack", str(out / "myrun"), "--base", "default", "--erased", "class=three", "--output", str(out)]
    assert main(argv) == 2
    assert "lies inside --output" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [".concept-erase.json", "myrun"]


def test_the_summary_goes_to_the_standard_output_of_the_moment(tmp_path):
    """Bound at import, the stream was whichever stdout the first importer had: under pytest a
    capture closed since, and ``erase attack`` then failed after writing its report."""
    model = dict(asr_before=1.0, asr_after=0.5, attacks=2, erased=[{"class": "three"}], seconds=3.0)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        print_summary({"models": {"run": model}}, tmp_path)
    assert printed.getvalue().startswith("run: ASR 100") and "report →" in printed.getvalue()
