"""Evaluation: metric code on crafted labels and images with known answers, the erased-concept
inference, the report's sections on a tiny end-to-end run, and clear errors for missing weights."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tiny_models import tiny_train_config

import erase.loop as loop
from erase.cli import main
from eval.concepts import infer_erased, parse_erased
from eval.config import EvalConfig
from eval.judges import Judge
from eval.metrics import EvalContext, ModelImages
from eval.metrics.clip_score import clip_score
from eval.metrics.erasure import erasure_metrics
from eval.metrics.fid import frechet_distance
from eval.report import SECTIONS
from eval.runner import evaluate
from prompts import InputError, load_prompts


def crafted(truth: list[tuple[str, str]], guess: list[tuple[str, str]]) -> ModelImages:
    entries = [{"prompt": f"a {s} {c}", "class": c, "style": s, "file": f"{i}.png"} for i, (c, s) in enumerate(truth)]
    return ModelImages(
        "m", None, entries, {"class": [g[0] for g in guess], "style": [g[1] for g in guess]}, is_base=False
    )


def test_class_wise_ua_and_ra_are_exact_on_a_crafted_set():
    truth = [("three", "red")] * 4 + [("five", "red")] * 3 + [("one", "plain")] * 3
    guess = [("three", "red"), ("eight", "red"), ("five", "red"), ("one", "red")]  # 3 of 4 not "three"
    guess += [("five", "red"), ("five", "red"), ("three", "red")]  # 2 of 3 fives right
    guess += [("one", "plain"), ("seven", "plain"), ("one", "plain")]  # 2 of 3 ones right
    model = crafted(truth, guess)
    ctx = EvalContext([model], [{"class": "three"}], forget_rows=[0, 1, 2, 3])
    scores = erasure_metrics(ctx, model)
    assert scores["UA"]["value"] == 0.75 and scores["UA"]["n"] == 4
    assert scores["RA"]["value"] == round(4 / 6, 4) and scores["RA"]["n"] == 6
    assert "IRA" not in scores and "NOT recognise" in scores["UA"]["definition"]


def test_style_ua_ira_and_cra_are_exact_on_a_crafted_set():
    truth = [("one", "red"), ("two", "red"), ("one", "plain"), ("two", "plain"), ("one", "blueprint")]
    guess = [("one", "plain"), ("five", "red"), ("one", "plain"), ("two", "red"), ("one", "blueprint")]
    model = crafted(truth, guess)
    scores = erasure_metrics(EvalContext([model], [{"style": "red"}], forget_rows=[0, 1]), model)
    assert scores["UA"]["value"] == 0.5  # one of the two red images is not judged red
    assert scores["IRA"]["value"] == round(2 / 3, 4) and scores["IRA"]["n"] == 3
    assert scores["CRA"]["value"] == 0.8 and scores["CRA"]["n"] == 5  # only "two" under red is wrong
    assert scores["CRA_erased_style"]["value"] == 0.5 and scores["CRA_erased_style"]["n"] == 2


def test_the_erased_concept_is_what_every_forget_prompt_shares():
    digits = load_prompts("default/digits")
    three = [r.prompt for r in load_prompts("default/classes/three-forget")]
    red = [r.prompt for r in load_prompts("default/styles/red-forget")]
    assert infer_erased(three, digits) == [{"class": "three"}]
    assert infer_erased(red, digits) == [{"style": "red"}]
    assert infer_erased(["a plain drawing of the digit three"], digits) == [{"class": "three", "style": "plain"}]
    with pytest.raises(InputError, match="--erased"):
        infer_erased(["a castle"], digits)
    seven = [r.prompt for r in load_prompts("default/classes/seven-forget")]
    assert infer_erased(three + seven, digits) == [{"class": "three"}, {"class": "seven"}]
    assert infer_erased(three + red, digits) == [{"class": "three"}, {"style": "red"}]
    # nothing covered whole: each prompt's own labels, not the label they share (plain), which would
    # count the plain digits nobody erased as failures
    assert infer_erased(three[:1] + seven[:1], digits) == [
        {"class": "three", "style": "plain"},
        {"class": "seven", "style": "plain"},
    ]
    assert infer_erased(three[:1] + three[:1] + seven[:2], digits) == [
        {"class": "three", "style": "plain"},
        {"class": "seven", "style": "plain"},
        {"class": "seven", "style": "inverted"},
    ]


def test_forget_prompts_with_the_same_labels_are_one_concept(write):
    rows = ["a red three,three,red", "a crimson three,three,red", "a blue three,three,blue", "a red five,five,red"]
    csv = "case_number,prompt,evaluation_seed,class,style\n" + "".join(
        f"{i},{prompt},{i},{labels}\n" for i, (prompt, labels) in enumerate(r.split(",", 1) for r in rows)
    )
    records = load_prompts(str(write("labels.csv", csv)))
    assert infer_erased(["a red three", "a crimson three"], records) == [{"class": "three", "style": "red"}]


def test_erased_flag_names_one_or_several_concepts():
    assert parse_erased("class=three") == [{"class": "three"}]
    assert parse_erased("class=three,style=red") == [{"class": "three", "style": "red"}]
    assert parse_erased("class=three; class=seven") == [{"class": "three"}, {"class": "seven"}]
    for bad in ("class=three,class=seven", "colour=red", "class="):
        with pytest.raises(InputError, match="--erased"):
            parse_erased(bad)


class PooledJudge(Judge):
    """A fixed feature space: 4×4 average-pooled pixels (48-d)."""

    name, axes, image_size, feature_name = "pooled", (), None, "pooled pixels"

    def predict(self, images):
        return {}

    def features(self, images):
        return F.adaptive_avg_pool2d(images, 4).flatten(1)


def test_fid_is_zero_for_identical_sets_and_grows_with_a_shift():
    images = torch.rand(200, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    judge = PooledJudge()
    same = frechet_distance(judge, images, images.clone())
    small = frechet_distance(judge, images, (images + 0.1).clamp(-1, 1))
    large = frechet_distance(judge, images, (images + 0.5).clamp(-1, 1))
    assert abs(same) < 1e-3
    assert same < small < large


class ColourEncoder:
    """A tiny fixed 'CLIP': images embed as their mean colour, texts as the colour they name."""

    architecture = "colour"
    COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}

    def encode_image(self, images):
        return F.normalize((images + 1).mean(dim=(2, 3)), dim=-1)

    def encode_text(self, texts):
        return F.normalize(torch.tensor([self.COLOURS[t.split()[1]] for t in texts]) + 0.05, dim=-1)


def test_clip_score_is_higher_for_matching_prompt_image_pairs():
    images = -torch.ones(3, 3, 8, 8)
    for i in range(3):
        images[i, i] = 1.0  # a red, a green and a blue image
    encoder = ColourEncoder()
    matching = clip_score(encoder, images, ["a red square", "a green square", "a blue square"])
    swapped = clip_score(encoder, images, ["a green square", "a blue square", "a red square"])
    assert (matching > swapped).all()
    assert ((0 <= matching) & (matching <= 100)).all() and matching.min() > 90


@pytest.fixture()
def tiny_run(tiny_pipeline_dir, write, tmp_path):
    forget = write("forget.txt", "a red drawing of the digit three\na plain drawing of the digit three\n")
    retain = write("retain.txt", "a red drawing of the digit five\na plain drawing of the digit one\n")
    config = tiny_train_config(tiny_pipeline_dir, forget, retain, tmp_path / "run")
    return loop.train(config)


def test_eval_end_to_end_writes_every_section_and_pairs_seeds(tiny_run, labelled_prompts, tmp_path):
    out = tmp_path / "report"
    real = tmp_path / "real"
    real.mkdir()
    noise = torch.Generator().manual_seed(1)
    for i in range(6):
        pixels = (torch.rand(16, 16, 3, generator=noise) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(real / f"{i}.png")
    config = EvalConfig(
        runs=[str(tiny_run)],
        output=str(out),
        prompts=str(labelled_prompts),
        judge="digit-style",
        real_images=str(real),
        images_per_prompt=2,
        steps=2,
    )
    result = evaluate(config)
    run = result.metrics["runs"]["run"]
    assert run["erased"] == [{"class": "three"}]
    assert run["forget_images"] == 4 and run["retain_images"] == 6
    assert run["erased_model"]["FID_vs_real"]["real_images"] == 6
    for key in ("UA", "RA", "FID_vs_base", "FID_vs_real"):
        entry = run["erased_model"][key]
        assert entry["definition"] and entry["n"] > 0 and entry["value"] is not None
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(result.metrics))
    report = (out / "report.md").read_text()
    for section in SECTIONS:
        assert f"## {section}" in report
    for name in ("run-forget.png", "run-retain.png", "run-training.png", "ua_vs_utility.png"):
        assert (out / "figures" / name).is_file()
        assert f"figures/{name}" in report
    base = [json.loads(x) for x in (out / "images" / "base" / "manifest.jsonl").read_text().splitlines()]
    erased = [json.loads(x) for x in (out / "images" / "run" / "manifest.jsonl").read_text().splitlines()]
    assert [(e["prompt"], e["seed"], e["image_index"]) for e in base] == [
        (e["prompt"], e["seed"], e["image_index"]) for e in erased
    ]


BROWSERS = ("chromium", "chromium-browser", "google-chrome")
CHECK_SCRIPT = """<script>
window.addEventListener("load", () => {
  const images = [...document.images].map(i => ({src: i.getAttribute("src"), loaded: i.complete,
    natural: i.naturalWidth, shown: Math.round(i.getBoundingClientRect().width),
    pixelated: getComputedStyle(i).imageRendering}));
  const out = document.createElement("pre");
  out.id = "render-check";
  out.textContent = JSON.stringify({images, tables: document.querySelectorAll("table").length,
    headings: [...document.querySelectorAll("h2")].map(h => h.textContent), title: document.title});
  document.body.appendChild(out);
});
</script>"""


def render_in_browser(page, tmp_path) -> dict:
    """Open ``page`` in headless Chromium (from its own folder, so relative figures resolve) and
    return what the page reports once loaded: every image's load state and sizes, the tables."""
    import html
    import re

    browser = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if browser is None:
        pytest.skip("no Chromium here; `apt-get install chromium` to run the browser test")
    probe = page.with_name("render-check.html")
    probe.write_text(page.read_text().replace("</body>", CHECK_SCRIPT + "\n</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
    flags += ["--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'chromium'}"]
    flags += ["--allow-file-access-from-files", "--window-size=1200,900", "--virtual-time-budget=10000"]
    done = subprocess.run([browser, *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="render-check">(.*?)</pre>', done.stdout, re.S)
    assert found, f"the page did not finish loading in {browser}: {done.stderr[-1500:]}"
    return json.loads(html.unescape(found.group(1)))


def test_html_report_renders_in_a_browser_with_its_images(tiny_run, labelled_prompts, tmp_path):
    out = tmp_path / "report"
    config = EvalConfig(
        runs=[str(tiny_run)], output=str(out), prompts=str(labelled_prompts), judge="digit-style",
        images_per_prompt=2, steps=2, progress=False,
    )  # fmt: skip
    evaluate(config)
    page = out / "report.html"
    text = page.read_text()
    for section in SECTIONS:
        assert f"<h2>{section}</h2>" in text
    seen = render_in_browser(page, tmp_path)
    figures = {i["src"]: i for i in seen["images"]}
    expected = {f"figures/{n}.png" for n in ("run-forget", "run-retain", "run-training", "ua_vs_utility")}
    assert set(figures) == expected, seen
    for image in figures.values():
        assert image["loaded"] and image["natural"] > 0, image  # a broken link has naturalWidth 0
        assert image["shown"] >= image["natural"], image  # drawn at full size, not shrunk
    for part, columns in (("forget", 2), ("retain", 3)):  # one column per distinct prompt
        grid = figures[f"figures/run-{part}.png"]
        assert grid["natural"] == columns * 96 and grid["pixelated"] == "pixelated", grid
    assert seen["headings"] == list(SECTIONS) and seen["tables"] == 2
    assert "class=three" in seen["title"]


def test_open_clip_judge_without_weights_says_which_file_is_needed(tiny_run, labelled_prompts, tmp_path, capsys):
    code = main(
        ["eval", str(tiny_run), "--output", str(tmp_path / "r"), "--prompts", str(labelled_prompts),
         "--judge", "open-clip"]
    )  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "--clip-weights FILE" in err[0] and "nothing is downloaded" in err[0]
    assert not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def tiny_imagenet_classifier(tmp_path_factory):
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    names = ["church, church building", "golf ball", "tench, Tinca tinca", "parachute, chute"]
    config = ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )
    folder = tmp_path_factory.mktemp("resnet")
    torch.manual_seed(0)
    ResNetForImageClassification(config).save_pretrained(folder)
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=1.0).save_pretrained(folder)
    return folder


def test_transformers_judge_maps_model_synonyms_onto_the_lists_classes(tiny_imagenet_classifier):
    from eval.judges import build_judge

    judge = build_judge(
        "transformers", {"class": ["church", "golf ball", "church"]}, classifier=str(tiny_imagenet_classifier)
    )
    assert judge.columns == {"church": [0], "golf ball": [1]}
    images = torch.rand(5, 3, 40, 40, generator=torch.Generator().manual_seed(0)) * 2 - 1
    logits = judge.model(**judge.processor(images=list((images + 1) / 2), return_tensors="pt", do_rescale=False)).logits
    expected = ["church" if a > b else "golf ball" for a, b in logits[:, :2].tolist()]
    assert judge.predict(images) == {"class": expected}
    with pytest.raises(InputError, match="has no label named 'castle'"):
        build_judge("transformers", {"class": ["castle"]}, classifier=str(tiny_imagenet_classifier))
    with pytest.raises(InputError, match="cannot load image classifier"):
        build_judge("transformers", {"class": ["church"]}, classifier="/nonexistent/folder")


def test_a_judge_that_cannot_label_the_erased_concept_is_refused(tiny_imagenet_classifier, write, tmp_path):
    """A class-only judge cannot see a style: every image would count as erased (UA 100% for a
    model that erased nothing). Refused with the fix before any image is drawn."""
    from eval.runner import judged_inputs

    prompts = write("list.csv", "prompt,class,style\na red church,church,red\na plain golf ball,golf ball,plain\n")
    config = EvalConfig(
        runs=["x"], output=str(tmp_path / "r"), prompts=str(prompts), judge="transformers",
        classifier=str(tiny_imagenet_classifier), erased="style=red",
    )  # fmt: skip
    with pytest.raises(InputError, match="cannot recognise style=red, so it cannot tell whether it is gone"):
        judged_inputs(config, "some/base", {"x": []})
    config.erased = "class=church"
    assert judged_inputs(config, "some/base", {"x": []})["erased"] == {"x": [{"class": "church"}]}


def test_a_two_label_concept_no_prompt_shows_is_refused(write, tmp_path):
    """Threes and red things, but no red three: UA of "red threes" would be undefined (shown as
    "–" with no reason); refused naming the fix."""
    from eval.runner import judged_inputs

    prompts = write("list.csv", "prompt,class,style\na plain three,three,plain\na red five,five,red\n")
    config = EvalConfig(runs=["x"], output=str(tmp_path / "r"), prompts=str(prompts), erased="class=three,style=red")
    with pytest.raises(InputError, match="no prompt of --prompts .* shows all of it"):
        judged_inputs(config, "some/base", {"x": []})


def test_runs_named_alike_get_names_no_other_run_has():
    from eval.runner import RunInfo, unique_names

    runs = [RunInfo(name, name, None, [], None) for name in ("x", "x", "x-2", "base")]
    unique_names(runs)
    assert [r.name for r in runs] == ["x", "x-2", "x-2-2", "base-2"]


@pytest.mark.slow
def test_eval_under_two_processes_shares_generation_and_reports_once(tiny_run, labelled_prompts, tmp_path):
    """torchrun with two CPU processes: images are split between them, the main process alone
    judges and scores (torchmetrics must not wait for the other one), and the report is whole."""
    out = tmp_path / "report"
    env = os.environ | {"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "erase"]
    command += ["eval", str(tiny_run), "--output", str(out), "--prompts", str(labelled_prompts)]
    command += ["--judge", "digit-style", "--images-per-prompt", "2", "--steps", "2", "--no-progress"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("report →") == 1
    metrics = json.loads((out / "metrics.json").read_text())["runs"]["run"]["erased_model"]
    assert metrics["FID_vs_base"]["value"] is not None and metrics["UA"]["n"] == 4
    for model in ("base", "run"):
        lines = (out / "images" / model / "manifest.jsonl").read_text().splitlines()
        assert len(lines) == len({json.loads(x)["file"] for x in lines}) == 10


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny open_clip architecture registered from a config, with random weights saved as
    safetensors: the real loading, tokenising and encoding path, offline."""
    import open_clip
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("clip")
    config = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (folder / "tiny-clip-test.json").write_text(json.dumps(config))
    open_clip.add_model_config(str(folder / "tiny-clip-test.json"))
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-clip-test", pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "weights.safetensors"))
    other = open_clip.create_model("tiny-clip-test", pretrained=None, force_image_size=64)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(folder / "wrong.safetensors"))
    return folder


def test_open_clip_encoder_and_zero_shot_judge_load_local_weights(tiny_clip):
    from eval.clip_encoder import load_clip_encoder
    from eval.judges import build_judge

    encoder = load_clip_encoder("tiny-clip-test", str(tiny_clip / "weights.safetensors"))
    images = torch.rand(3, 3, 20, 20, generator=torch.Generator().manual_seed(0)) * 2 - 1
    feats = encoder.encode_image(images)
    assert feats.shape == (3, 16) and torch.allclose(feats.norm(dim=-1), torch.ones(3))
    scores = clip_score(encoder, images, ["a cat", "a dog", "a church"])
    assert ((0 <= scores) & (scores <= 100)).all()
    labels = {"class": ["church", "golf ball"], "style": ["Monet"]}
    judge = build_judge(
        "open-clip", labels, clip_model="tiny-clip-test", clip_weights=str(tiny_clip / "weights.safetensors")
    )
    text = encoder.encode_text(["a photo of a church", "a photo of a golf ball"])
    expected = [["church", "golf ball"][i] for i in (feats @ text.T).argmax(1).tolist()]
    assert judge.predict(images) == {"class": expected, "style": ["Monet"] * 3}
    with pytest.raises(InputError, match="does not fit open_clip tiny-clip-test"):
        load_clip_encoder("tiny-clip-test", str(tiny_clip / "wrong.safetensors"))
    pickle = tiny_clip / "weights.bin"
    pickle.write_bytes(b"not read")
    with pytest.raises(InputError, match="is a pickle"):
        load_clip_encoder("tiny-clip-test", str(pickle))


def test_an_open_clip_folder_loads_with_its_own_zero_shot_templates(tiny_clip, tmp_path):
    """open_clip's local-dir layout (config + weights in one folder), as the shipped tiny CLIP
    is stored: the same encoder as architecture + file, and the judge uses the folder's
    templates instead of CLIP's photo/painting ones."""
    from eval.clip_encoder import load_clip_encoder, load_clip_folder
    from eval.judges import build_judge

    folder = tmp_path / "clip"
    folder.mkdir()
    model_cfg = json.loads((tiny_clip / "tiny-clip-test.json").read_text())
    templates = {"class": "a sketch of a {}", "style": "{} style"}
    record = {
        "model_cfg": model_cfg,
        "preprocess_cfg": {"size": 32},
        "concept_erase": {"zero_shot_templates": templates},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(record))
    shutil.copy(tiny_clip / "weights.safetensors", folder / "open_clip_model.safetensors")
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    by_file = load_clip_encoder("tiny-clip-test", str(tiny_clip / "weights.safetensors"))
    by_folder = load_clip_encoder("auto", str(folder))
    assert torch.equal(by_folder.encode_image(images), by_file.encode_image(images))
    assert torch.equal(by_folder.encode_text(["a cat"]), by_file.encode_text(["a cat"]))
    assert by_folder.templates == templates and load_clip_folder(folder).architecture == "clip"
    judge = build_judge("open-clip", {"class": ["cat", "dog"]}, clip=by_folder)
    assert torch.equal(judge.text["class"], by_file.encode_text(["a sketch of a cat", "a sketch of a dog"]))
    (folder / "open_clip_model.safetensors").rename(folder / "open_clip_pytorch_model.bin")
    with pytest.raises(InputError, match="found none .pickled weights are read only with --allow-pickle"):
        load_clip_folder(folder)
    (folder / "open_clip_config.json").unlink()
    with pytest.raises(InputError, match="has no readable open_clip_config.json"):
        load_clip_folder(folder)


def test_the_shipped_tiny_clip_knows_the_default_models_digits_and_styles():
    """The shipped weights, read as eval reads them, on renderings held out from its training."""
    from eval.clip_encoder import TINY_CLIP_DIR, load_clip_folder
    from eval.judges import build_judge
    from pipelines.default.render import DIGIT_WORDS, STYLES, held_out_mask, render_all

    data = render_all()
    held = data.subset(held_out_mask(data.source_index))
    every = torch.arange(len(held.digits))[:: max(1, len(held.digits) // 400)]
    images, digits, styles = held.images[every], held.digits[every], held.styles[every]
    encoder = load_clip_folder(TINY_CLIP_DIR)
    judge = build_judge("open-clip", {"class": list(DIGIT_WORDS), "style": list(STYLES)}, clip=encoder)
    found = judge.predict(images)
    digit_accuracy = sum(f == DIGIT_WORDS[d] for f, d in zip(found["class"], digits.tolist(), strict=True))
    style_accuracy = sum(f == STYLES[s] for f, s in zip(found["style"], styles.tolist(), strict=True))
    assert digit_accuracy / len(every) > 0.8 and style_accuracy / len(every) > 0.95  # 86.9% and 100% on all 1,440
    right = [f"a {STYLES[s]} drawing of the digit {DIGIT_WORDS[d]}" for d, s in zip(digits, styles, strict=True)]
    wrong = [
        f"a {STYLES[s]} drawing of the digit {DIGIT_WORDS[(d + 1) % 10]}" for d, s in zip(digits, styles, strict=True)
    ]
    assert (clip_score(encoder, images, right) > clip_score(encoder, images, wrong)).float().mean() > 0.9


@pytest.fixture(scope="module")
def random_inception_weights(tmp_path_factory):
    """torch-fidelity's Inception-v3 with random weights, saved as safetensors (the real file is
    a download we cannot make here). Building it needs a weights file, so its loading is stubbed."""
    pytest.importorskip("torch_fidelity")
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as fidelity
    from safetensors.torch import save_file
    from torchmetrics.image.fid import NoTrainInceptionV3

    torch.manual_seed(0)
    with (
        mock.patch.object(fidelity.torch, "load", lambda *a, **k: {}),
        mock.patch.object(fidelity.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None),
    ):
        network = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path="x"
        )
    for module in network.modules():  # keep activations alive through 90 random layers
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("inception") / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(path))
    return path


@pytest.mark.slow
def test_inception_fid_loads_safetensors_and_separates_shifted_sets(random_inception_weights, tmp_path):
    from eval.inception import load_inception

    extractor = load_inception(str(random_inception_weights))
    images = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert extractor.features(images[:2]).shape == (2, 2048)
    same = frechet_distance(extractor, images, images.clone())
    shifted = frechet_distance(extractor, images, (images * 0.3 + 0.6).clamp(-1, 1))
    assert abs(same) < 1e-2 < shifted
    wrong = tmp_path / "wrong.safetensors"
    from safetensors.torch import save_file

    save_file({"conv.weight": torch.zeros(3, 3)}, str(wrong))
    with pytest.raises(InputError, match="is not torch-fidelity's Inception-v3"):
        load_inception(str(wrong))
    with pytest.raises(InputError, match="needs --fid-weights FILE"):
        load_inception(None)
    with pytest.raises(InputError, match="must be an existing .safetensors file"):
        load_inception(str(tmp_path / "weights.pth"))


def test_eval_of_several_runs_scores_each_against_one_set_of_base_images(
    tiny_run, tiny_pipeline_dir, labelled_prompts, write, tmp_path
):
    """Two runs in one `erase eval`: the erased run and an untouched copy of the base model (how
    a user evaluates another tool's checkpoint). The base's images are drawn once; the copy draws
    the same pixels from the same seeds, so it must score exactly what the base scores, with
    FID_vs_base 0, while both runs' entries carry the same base numbers."""
    shutil.copytree(tiny_pipeline_dir, tmp_path / "untouched")
    out = tmp_path / "report"
    config = EvalConfig(
        runs=[str(tiny_run), str(tmp_path / "untouched")],
        output=str(out),
        prompts=str(labelled_prompts),
        forget=str(write("forget.txt", "a red drawing of the digit three\na plain drawing of the digit three\n")),
        judge="digit-style",
        images_per_prompt=2,
        steps=2,
    )
    result = evaluate(config)
    runs = result.metrics["runs"]
    assert set(runs) == {"run", "untouched"}
    assert result.metrics["generation"]["images_generated"] == 3 * 5 * 2  # base once, then each run
    copy = runs["untouched"]
    for key in ("UA", "RA"):
        assert copy["erased_model"][key]["value"] == copy["base"][key]["value"], key
    assert copy["erased_model"]["FID_vs_base"]["value"] == pytest.approx(0.0, abs=1e-3)
    assert runs["run"]["base"] == copy["base"]
    assert runs["run"]["erased_model"]["FID_vs_base"]["value"] > 0.01  # the erased run did change
    first = json.loads((out / "images" / "base" / "manifest.jsonl").read_text().splitlines()[0])["file"]
    for name in ("run", "untouched"):
        a = np.asarray(Image.open(out / "images" / "base" / first))
        b = np.asarray(Image.open(out / "images" / name / first))
        assert np.array_equal(a, b) == (name == "untouched")
    report = (out / "report.md").read_text()
    assert "untouched" in report and "figures/run-forget.png" in report and "figures/untouched-forget.png" in report


@pytest.mark.parametrize("damage", ["unfinished", "truncated-weights", "unet-file-of-another-shape"])
def test_a_model_that_cannot_load_is_refused_before_any_image_is_drawn(
    tiny_run, labelled_prompts, tmp_path, damage, capsys
):
    """The base loads and draws fine; the run cannot load. Nothing may be written: the check
    comes before the base model's images, not after them."""
    broken = tmp_path / "broken"
    shutil.copytree(tiny_run, broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    if damage == "unfinished":  # killed before its pipeline was saved
        (broken / "model_index.json").unlink()
    elif damage == "truncated-weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    else:  # a UNet-only state dict (the field's usual release format) that does not fit the base
        from safetensors.torch import load_file, save_file

        state = load_file(str(weights))
        state[next(iter(state))] = torch.zeros(3, 3)
        broken = tmp_path / "unet.safetensors"
        save_file(state, str(broken))
    out = tmp_path / "report"
    argv = ["eval", str(broken), "--output", str(out), "--prompts", str(labelled_prompts), "--judge", "digit-style"]
    if damage == "unet-file-of-another-shape":
        argv += [
            "--erased",
            "class=three",
            "--base",
            str(json.loads((tiny_run / "train_config.json").read_text())["base_model"]),
        ]
    code = main([*argv, "--images-per-prompt", "1", "--steps", "2", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(broken) in err[0], err
    assert not out.exists()


def test_eval_switches_a_bundled_safety_checker_off_and_says_so(tokenizer, labelled_prompts, tmp_path, capsys):
    """A folder whose safety checker flags everything: plain diffusers returns black images, and
    UA/RA on them would be noise. Evaluation draws the model's real images and says once per
    model that the checker is off; `erase generate --safety-checker` keeps it, and then warns
    that the images are black."""
    from tiny_models import save_sd1_with_safety_checker

    model = tmp_path / "with-checker"
    save_sd1_with_safety_checker(model, tokenizer)
    out = tmp_path / "report"
    argv = ["eval", str(model), "--base", str(model), "--erased", "class=three", "--prompts", str(labelled_prompts)]
    assert main([*argv, "--output", str(out), "--judge", "digit-style", "--images-per-prompt", "1", "--steps", "2",
                 "--no-progress"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("carries a safety checker; it is off") == 2 and "entirely black" not in err, err
    for image in (out / "images" / "base").glob("*.png"):
        assert max(high for _, high in Image.open(image).getextrema()) > 2
    kept = tmp_path / "kept"
    argv = ["generate", "--model", str(model), "--prompts", str(labelled_prompts), "--output", str(kept)]
    assert main([*argv, "--steps", "2", "--safety-checker", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "warning: 5 of the 5 images drawn are entirely black" in err and "it is off" not in err


def test_a_retain_label_the_judge_cannot_answer_is_refused_where_a_score_reads_it(write, tmp_path):
    """Found by a probe: a retain prompt labelled with a class the judge does not have counted as
    "not recognised", lowering RA with no word of why. Refused on the axes the scores read; a label
    on an axis no score of this concept reads (a style, for a class) is left alone."""
    from eval.runner import judged_inputs

    rows = "prompt,class,style\na plain drawing of the digit three,three,plain\n"
    rows += "a plain drawing of the digit five,five,plain\na plain drawing of a dragon,dragon,watercolour\n"
    prompts = write("list.csv", rows)
    config = EvalConfig(runs=["x"], output=str(tmp_path / "r"), prompts=str(prompts), judge="digit-style")
    config.erased = "class=three"
    with pytest.raises(InputError, match="cannot recognise class=dragon of --prompts .*lower the retain scores"):
        judged_inputs(config, "default", {"x": []})
    write("list.csv", rows.replace("dragon,watercolour", "seven,watercolour"))  # only the style is unknown
    assert judged_inputs(config, "default", {"x": []})["erased"] == {"x": [{"class": "three"}]}
    config.erased = "style=plain"  # a style's scores read the style (IRA) and the class (CRA)
    with pytest.raises(InputError, match="cannot recognise style=watercolour"):
        judged_inputs(config, "default", {"x": []})
    write("list.csv", rows.replace("dragon,watercolour", "dragon,red"))
    with pytest.raises(InputError, match="cannot recognise class=dragon"):  # CRA reads the class
        judged_inputs(config, "default", {"x": []})
