"""`erase sweep`: the grid's syntax, the front's arithmetic on crafted points, and a two-point
sweep on tiny components that resumes by adding a point."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from erase.cli import main
from erase.sweep import (
    GridPoint,
    SweepConfig,
    front_table,
    hypervolume,
    parse_grid,
    plan_runs,
    summarise,
    unread_by_every_run,
)
from prompts import InputError


def test_grid_entries_become_points_with_typed_values():
    points = parse_grid(["eupmu:retain_budget=0,1e-6", "none", "eupmu:lambda-warmup=5"])
    assert points == [
        GridPoint("eupmu", "retain_budget", 0.0),
        GridPoint("eupmu", "retain_budget", 1e-6),
        GridPoint("none", None, None),
        GridPoint("eupmu", "lambda_warmup", 5),
    ]
    assert type(points[3].value) is int and points[1].run_name(2) == "eupmu-retain_budget-1e-06-s2"


def test_a_choice_setting_is_a_grid_knob_and_each_run_gets_its_choice(tmp_path):
    """x_source, retain_probe, loss, ... are compared as numbers are: each name is one point."""
    points = parse_grid(["eupmu-fast:x-source=bank,trajectory", "eupmu:retain_probe=fresh"])
    assert [p.value for p in points] == ["bank", "trajectory", "fresh"]
    assert [p.label for p in points][1] == "eupmu-fast x_source=trajectory"
    assert points[1].run_name(0) == "eupmu-fast-x_source-trajectory-s0"
    sweep = SweepConfig(output=str(tmp_path / "sweep"), grid=[])
    planned = plan_runs(sweep, {"model": "default", "concept": "a red drawing of the digit three"}, points)
    assert [(c.method, c.x_source, c.retain_probe) for _, _, c in planned] == [
        ("eupmu-fast", "bank", "same"),
        ("eupmu-fast", "trajectory", "same"),
        ("eupmu", "bank", "fresh"),
    ]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("esd", "unknown method 'esd'; choose one of"),
        ("eupmu:budget=1", "SETTING one of"),
        ("eupmu:retain_budget", "expected METHOD:SETTING=V1,V2"),
        ("eupmu:seed=1,2", "SETTING one of"),  # set per run by --seeds, not a knob
        ("weighted:retain_weight=1,x", "'x' is not a float"),
        ("weighted:x_source=bank,banks", "x_source has no choice 'banks'; choose from bank, sample, trajectory"),
        ("weighted:half_frozen=1", "SETTING one of"),  # a switch, fixed for the sweep
        ("weighted:mixed_precision=no,bf16", "SETTING one of"),  # the processes' own, fixed for the sweep
        ("none,none", "unknown method"),
    ],
)
def test_a_wrong_grid_entry_is_named_with_the_fix(entry, message):
    with pytest.raises(InputError, match=message):
        parse_grid([entry])


def test_a_grid_point_given_twice_is_refused():
    with pytest.raises(InputError, match="names a point twice"):
        parse_grid(["none", "none"])


def test_a_fixed_setting_no_run_of_the_sweep_reads_gets_a_note(tmp_path):
    """A flag read by some grid points is the comparison's own (no note); one read by none is a
    mistake the user should hear of, as `erase train` says for a single run."""
    train = {"model": "default", "concept": "a red drawing of the digit three", "lambda_lr": 1e4, "mask_delta": 0.1}

    def notes(*grid):
        sweep = SweepConfig(output=str(tmp_path / "sweep"), grid=list(grid))
        return unread_by_every_run(plan_runs(sweep, train, parse_grid(sweep.grid)), set(train))

    mixed = notes("weighted:retain_weight=1,3", "eupmu-fast")
    assert any("--mask-delta changes nothing in this sweep; only --mask feasible" in n for n in mixed)
    assert not any("--lambda-lr" in n for n in mixed)  # eupmu-fast reads λ's rate
    assert any(
        "--lambda-lr changes nothing in this sweep; only --grid" in n for n in notes("weighted:retain_weight=1,3")
    )


def test_hypervolume_is_the_area_the_points_dominate():
    assert hypervolume([(1.0, 0.5), (0.5, 1.0)]) == pytest.approx(0.75)  # two rectangles minus their overlap
    assert hypervolume([(1.0, 0.5), (0.5, 1.0), (0.4, 0.4)]) == pytest.approx(0.75)  # a dominated point adds 0
    assert hypervolume([(0.8, 0.9)]) == pytest.approx(0.72) and hypervolume([]) == 0.0


def test_the_benchmark_fronts_take_each_concepts_points_and_one_fid_scale_for_all_methods():
    """scripts/fronts_tradeoff.py on hand-made rows: per concept, a method's points of that seed
    only; UA = 1 − erased; FID_max is the concept's largest FID over both methods (40 here), so
    a's FID 10 counts 0.75 and b's FID 40 counts 0."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from fronts_tradeoff import fronts

    def row(method, setting, erased, kept, fid, seed=0, target="class:zero"):
        common = {"target": target, "method": method, "setting": setting, "seed": seed}
        return common | {"erased": erased, "others_mean": kept, "fid_vs_base": fid}

    rows = [
        row("a", "x=1", 0.0, 0.5, 10.0),
        row("a", "x=2", 0.5, 1.0, 10.0),
        row("a", "x=1", 0.9, 0.1, 99.0, seed=1),  # another seed: not on seed 0's front
        row("b", "y=1", 0.2, 0.8, 40.0),
        row("b", "y=1", 0.0, 1.0, 1.0, target="class:one"),  # one has no point of a: left out
    ]
    result = fronts(rows, {"A": ["a:x=1", "a:x=2"], "B": ["b:y=1"]}, seed=0)
    assert list(result) == ["class:zero"]
    zero = result["class:zero"]
    assert zero["A"]["UA_kept"] == pytest.approx(hypervolume([(1.0, 0.5), (0.5, 1.0)]))
    assert zero["A"]["UA_FID"] == pytest.approx(0.75) and zero["B"]["UA_FID"] == 0.0
    assert zero["B"]["UA_kept"] == pytest.approx(0.8 * 0.8)


def test_the_benchmark_fronts_average_each_seeds_own_front_and_count_the_bar_per_seed():
    """Two seeds: each seed's areas use that seed's FID_max (seed 0: 40, seed 1: 20), the table
    holds their mean; a concept missing a method at one seed is left out; the untuned score
    counts the concepts that meet the bar at each seed."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from fronts_tradeoff import over_seeds, rows_text, table, untuned

    def row(method, erased, fid, seed, target="class:zero", meets=True):
        common = {"target": target, "method": method, "setting": "k=1", "seed": seed, "meets_bar": meets}
        return common | {"erased": erased, "others_mean": 1.0, "others_worst": 1.0, "fid_vs_base": fid}

    rows = [
        row("a", 0.0, 10.0, 0), row("b", 0.0, 40.0, 0, meets=False),
        row("a", 0.5, 10.0, 1), row("b", 0.0, 20.0, 1),
        row("a", 0.0, 1.0, 0, target="class:one"), row("b", 0.0, 1.0, 0, target="class:one"),
    ]  # fmt: skip
    methods = {"A": ["a:k=1"], "B": ["b:k=1"]}
    result = over_seeds(rows, methods, [0, 1])
    assert list(result) == ["class:zero"]  # one has no seed-1 points
    a = result["class:zero"]["A"]
    # seed 0: UA 1 × (1 − 10/40) = 0.75; seed 1: UA 0.5 × (1 − 10/20) = 0.25
    assert a["UA_FID"] == pytest.approx(0.5) and a["UA_FID_sd"] == pytest.approx(0.3536, abs=1e-4)
    assert a["UA_kept"] == pytest.approx(0.75) and result["class:zero"]["B"]["UA_FID"] == 0.0
    assert a["points"] == [pytest.approx((0.75, 1.0, 10.0))]
    shown = table(result, ["A", "B"], "UA_FID")
    assert shown[2] == "| zero | **0.500** | 0.000 |" and shown[-1] == "| **largest on** | 1 of 1 | 0 of 1 |"
    assert shown[-2] == "| **mean per seed** | 0.750 · 0.250 | 0.000 · 0.000 |"
    # with one's seed-1 points too: each seed's mean is over both concepts (seed 1: (0.25 + 1) / 2)
    both = rows + [row("a", 0.0, 0.0, 1, target="class:one"), row("b", 0.0, 1.0, 1, target="class:one")]
    shown = table(over_seeds(both, methods, [0, 1]), ["A", "B"], "UA_FID")
    assert shown[-2] == "| **mean per seed** | 0.375 · 0.625 | 0.000 · 0.000 |"
    saved = rows_text(rows + [row("c", 0.0, 1.0, 0)], methods)  # c is not compared: not saved
    order = [(r["target"], r["method"], r["seed"]) for r in json.loads(saved)]
    assert order == [("class:zero", "a", 0), ("class:zero", "a", 1), ("class:zero", "b", 0), ("class:zero", "b", 1),
                     ("class:one", "a", 0), ("class:one", "b", 0)]  # fmt: skip
    assert len(saved.splitlines()) == 8  # one row per line between the brackets
    lines = untuned(rows, methods, [0, 1], list(result))
    assert "| A | k=1 | 1/1 · 1/1 | 75.0% |" in lines[2] and "| B | k=1 | 0/1 · 1/1 | 100.0% |" in lines[3]


def test_the_front_keeps_the_points_nothing_beats_and_averages_seeds():
    """a: UA 0.9 / kept 0.6 (mean of two seeds); b: 0.5 / 0.9; c: 0.4 / 0.8 (b beats it)."""

    class Config:
        def __init__(self, output):
            self.output = output

    planned, scored = [], {}
    for name, method, seed, ua, kept, fid in [
        ("a0", "eupmu", 0, 1.0, 0.5, 2.0), ("a1", "eupmu", 1, 0.8, 0.7, 4.0),
        ("b0", "weighted", 0, 0.5, 0.9, 1.0), ("c0", "none", 0, 0.4, 0.8, 8.0),
    ]:  # fmt: skip
        point = GridPoint(method, None, None)
        planned.append((point, seed, Config(f"/x/{name}")))
        scored[name] = {"erased_model": {"UA": {"value": ua}, "RA": {"value": kept}, "FID_vs_base": {"value": fid}}}
    front = summarise(planned, scored)
    by = {p["point"]: p for p in front["points"]}
    assert by["eupmu"]["UA"] == pytest.approx(0.9) and by["eupmu"]["kept"] == pytest.approx(0.6)
    assert by["eupmu"]["seeds"] == 2 and by["eupmu"]["UA_std"] == pytest.approx(0.1414, abs=1e-4)
    assert [p["on_front"] for p in front["points"]] == [True, True, False]
    assert front["fid_max"] == 8.0
    assert front["methods"]["eupmu"]["hypervolume_UA_kept"] == pytest.approx(0.54)
    assert front["methods"]["eupmu"]["hypervolume_UA_FID"] == pytest.approx(0.9 * (1 - 3.0 / 8.0))
    assert front["methods"]["none"]["hypervolume_UA_FID"] == pytest.approx(0.0)


def test_a_concept_with_two_labels_is_fronted_on_the_ua_its_report_headlines():
    """Plain threes report UA_class and UA_style, no UA: the sweep once trained and scored every
    point, then stopped on a KeyError before writing its front."""

    class Config:
        output = "/x/run"

    scores = {"UA_class": {"value": 0.75}, "UA_style": {"value": 0.25}, "RA": {"value": 0.9}, "IRA": {"value": 0.5}}
    front = summarise([(GridPoint("weighted", None, None), 0, Config())], {"run": {"erased_model": scores}})
    (row,) = front["runs"]
    assert (row["UA"], row["UA_metric"], row["kept"], row["kept_metric"]) == (0.75, "UA_class", 0.9, "RA")
    assert "UA = UA_class, kept = RA." in front_table(front)


def test_each_choice_is_a_front_of_its_own_while_a_numbers_values_share_one():
    class Config:
        def __init__(self, output):
            self.output = output

    points = parse_grid(["eupmu-fast:x_source=bank,trajectory", "weighted:retain_weight=1,3"])
    planned = [(point, 0, Config(f"/x/{i}")) for i, point in enumerate(points)]
    values = [(1.0, 0.5), (0.5, 1.0), (1.0, 0.5), (0.5, 1.0)]  # (UA, kept)
    scored = {
        str(i): {"erased_model": {"UA": {"value": ua}, "RA": {"value": kept}}} for i, (ua, kept) in enumerate(values)
    }
    front = summarise(planned, scored)
    assert list(front["methods"]) == ["eupmu-fast x_source=bank", "eupmu-fast x_source=trajectory", "weighted"]
    assert front["methods"]["eupmu-fast x_source=bank"]["hypervolume_UA_kept"] == pytest.approx(0.5)
    assert front["methods"]["weighted"]["points"] == 2
    assert front["methods"]["weighted"]["hypervolume_UA_kept"] == pytest.approx(0.75)  # both values, one front


@pytest.mark.slow
def test_a_sweep_trains_evaluates_and_resumes_by_adding_a_point(tiny_pipeline_dir, write, tmp_path, capsys):
    rows = ["case_number,prompt,evaluation_seed,class,style"]
    cases = [("three", "red"), ("three", "plain"), ("five", "red"), ("one", "plain")]
    rows += [f"{i},a {s} drawing of the digit {c},{10 + i},{c},{s}" for i, (c, s) in enumerate(cases)]
    prompts = write("eval.csv", "\n".join(rows) + "\n")
    forget = write("forget.txt", "a red drawing of the digit three\na plain drawing of the digit three\n")
    retain = write("retain.txt", "a red drawing of the digit five\na plain drawing of the digit one\n")
    out = tmp_path / "sweep"
    argv = ["sweep", "--output", str(out), "--model", str(tiny_pipeline_dir), "--forget", str(forget)]
    argv += ["--retain", str(retain), "--steps", "2", "--batch-size", "2", "--bank-size", "1", "--bank-steps", "1"]
    argv += ["--prompts", str(prompts), "--judge", "digit-style", "--images-per-prompt", "1", "--eval-steps", "2"]
    argv += ["--no-progress", "--grid", "weighted:retain_weight=1,3"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "run 2/2: weighted retain_weight=3, seed 0" in printed and "front → " in printed
    front = json.loads((out / "front.json").read_text())
    assert [r["point"] for r in front["runs"]] == ["weighted retain_weight=1", "weighted retain_weight=3"]
    assert all(0 <= r["UA"] <= 1 and 0 <= r["kept"] <= 1 and r["kept_metric"] == "RA" for r in front["runs"])
    assert (out / "runs" / "weighted-retain_weight-3-s0" / "model_index.json").is_file()  # an ordinary run
    assert (out / "front.png").stat().st_size > 0 and "| weighted retain_weight=1 | 1 |" in (
        out / "front.md"
    ).read_text()
    config = json.loads((out / "runs" / "weighted-retain_weight-3-s0" / "train_config.json").read_text())
    assert config["retain_weight"] == 3.0 and config["method"] == "weighted" and config["seed"] == 0

    assert main(argv) == 2  # a second sweep into the same folder must say --resume
    assert "holds a sweep; use --resume" in capsys.readouterr().err
    kept_run = (out / "runs" / "weighted-retain_weight-1-s0" / "model_index.json").stat().st_mtime_ns
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert main([*argv, "--resume", "--steps", "3"]) == 2  # its runs trained another way: refused
    err = capsys.readouterr().err
    assert "started with steps=2, not 3" in err and "afresh in another --output" in err and "--overwrite" not in err
    assert main([*argv, "--grid", "none", "--resume", "--eval-steps", "3"]) == 2  # scored another way: refused
    assert "evaluated with --eval-steps 2, not 3" in capsys.readouterr().err  # before any run trains
    assert sorted(p.name for p in (out / "runs").iterdir()) == runs
    assert main([*argv, "--grid", "none", "--resume"]) == 0
    assert (out / "runs" / "weighted-retain_weight-1-s0" / "model_index.json").stat().st_mtime_ns == kept_run
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["generation"]["images_generated"] == 4  # only the new run's images
    assert len(json.loads((out / "front.json").read_text())["points"]) == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--prompts", "plain.txt"], "has no class or style column"),
        (["--images-per-prompt", "0"], "--images-per-prompt must be at least 1"),
        (["--grid", "eupmu-fast:lambda_lr=1e-6,1e6"], "would share the run folder eupmu-fast-lambda_lr-1e-06-s0"),
    ],
)
def test_a_sweep_refuses_bad_evaluation_input_before_training(
    tiny_pipeline_dir, write, tmp_path, capsys, extra, message
):
    """The evaluation comes after every run has trained: its inputs are checked first, with
    nothing written, or a typo would cost the whole sweep."""
    write("plain.txt", "a red drawing of the digit five\n")  # prompts with no class or style column
    forget = write("forget.txt", "a red drawing of the digit three\n")
    out = tmp_path / "sweep"
    argv = ["sweep", "--output", str(out), "--model", str(tiny_pipeline_dir), "--forget", str(forget)]
    argv += ["--steps", "1", "--no-progress", "--grid", "none"]
    extra = [str(tmp_path / e) if e.endswith(".txt") else e for e in extra]
    assert main([*argv, *extra]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_rescoring_keeps_a_row_whose_run_is_not_here(tmp_path, capsys):
    """Rows copied from docs/results/ have no run folder: --rescore keeps them as they are
    instead of failing on the first (it would try to draw from a model that is not there)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from bench_tradeoff import _rescored

    row = {"target": "class:zero", "method": "weighted", "setting": "retain_weight=10", "seed": 1, "erased": 0.0}
    assert _rescored(row, tmp_path, images_per_prompt=1) is row
    assert "class-zero-weighted-retain_weight10-s1 has no run" in capsys.readouterr().out
