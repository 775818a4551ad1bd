"""Several concepts: erased at once (one forget list spanning them) or one after another
(`erase train --model RUN`), and `erase eval` measuring each of them."""

from __future__ import annotations

import json
from pathlib import Path

from tiny_models import tiny_train_config

from erase import loop
from erase.cli import main
from erase.lineage import read_lineage
from eval.config import EvalConfig
from eval.runner import evaluate

THREE = ["a red drawing of the digit three", "a plain drawing of the digit three"]
FIVE = ["a red drawing of the digit five", "a plain drawing of the digit five"]


def _train(model: str, forget: list[str], output: Path, write) -> Path:
    forget_file = write(f"{output.name}-forget.txt", "\n".join(forget) + "\n")
    retain = write("retain.txt", "a plain drawing of the digit one\n")
    config = tiny_train_config(model, forget_file, retain, output, steps=2)
    return loop.train(config)


def _eval(run: Path, prompts: Path, out: Path) -> dict:
    config = EvalConfig(
        runs=[str(run)], output=str(out), prompts=str(prompts), judge="digit-style", images_per_prompt=1, steps=2
    )
    return evaluate(config).metrics["runs"][run.name]


def test_one_run_erasing_two_digits_is_scored_per_digit(tiny_pipeline_dir, write, labelled_prompts, tmp_path):
    run = _train(str(tiny_pipeline_dir), THREE + FIVE, tmp_path / "both", write)
    scores = _eval(run, labelled_prompts, tmp_path / "report")
    assert scores["erased"] == [{"class": "three"}, {"class": "five"}]
    assert scores["forget_images"] == 4 and scores["retain_images"] == 1
    for key, n in (("UA", 4), ("UA_three", 2), ("UA_five", 2), ("RA", 1)):
        assert scores["erased_model"][key]["n"] == n, key
    report = (tmp_path / "report" / "report.md").read_text()
    assert "class=three; class=five" in report and "UA_five" in report


def test_a_run_erased_from_a_run_records_its_lineage_and_is_scored_on_every_concept(
    tiny_pipeline_dir, write, labelled_prompts, tmp_path
):
    first = _train(str(tiny_pipeline_dir), THREE, tmp_path / "three", write)
    second = _train(str(first), FIVE, tmp_path / "then-five", write)
    recorded = json.loads((second / "train_config.json").read_text())
    assert recorded["lineage"] == [{"run": str(first.resolve()), "forget_prompts": THREE}]
    assert recorded["root_base_model"] == str(Path(tiny_pipeline_dir).resolve())
    assert recorded["base_model"] == str(first.resolve())  # what it trained from
    assert recorded["forget_prompts"] == FIVE

    third = _train(str(second), ["a red drawing of the digit one"], tmp_path / "then-one", write)
    lineage = read_lineage(str(third))
    assert [step["run"] for step in lineage.steps] == [
        str(first.resolve()),
        str(second.resolve()),
        str(third.resolve()),
    ]
    assert lineage.root == str(Path(tiny_pipeline_dir).resolve())

    scores = _eval(second, labelled_prompts, tmp_path / "report")
    assert scores["erased"] == [{"class": "three"}, {"class": "five"}]  # the earlier concept is measured again
    assert "UA_three" in scores["erased_model"] and "UA_five" in scores["erased_model"]
    generation = json.loads((tmp_path / "report" / "images" / "base" / "generation.json").read_text())
    assert generation["model"] == str(Path(tiny_pipeline_dir).resolve())  # compared with the original, not the parent


def test_a_folder_with_a_foreign_train_config_is_refused(tiny_pipeline_dir, write, tmp_path, capsys):
    model = tmp_path / "odd"
    model.mkdir()
    (model / "train_config.json").write_text('{"something": "else"}')
    forget = write("f.txt", THREE[0] + "\n")
    code = main(["train", "--model", str(model), "--forget", str(forget), "--output", str(tmp_path / "run")])
    assert code == 2
    assert "not an `erase train` record" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
