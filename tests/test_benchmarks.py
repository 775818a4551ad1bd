"""The benchmark scripts a GPU session runs, in their CPU smoke modes: a script that broke on a
change elsewhere (a new default the step table's method swap did not carry) would otherwise be
found on the GPU, in the few minutes a session has one. Their figures mean nothing here; that
they run, and report a row for everything asked, is what is checked."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


def run_script(name: str, *argv: str, tmp_path: Path) -> list[dict]:
    """Run scripts/<name> and return the JSON records it appended to --out."""
    out = tmp_path / "records.jsonl"
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / name), *argv, "--out", str(out)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in out.read_text().splitlines()] if out.is_file() else []


@pytest.mark.slow
def test_the_step_table_times_every_method_asked(tmp_path):
    methods = ["weighted", "eupmu-fast", "eupmu:next", "explicit"]  # the reference first
    methods += ["weighted+joint", "weighted+apart", "weighted+halves"]
    argv = ["--smoke", "--parameters", "xattn", "--batch", "1", "--steps", "2", "--methods", *methods]
    records = run_script("bench_scale.py", *argv, tmp_path=tmp_path)
    assert [r["method"] for r in records] == methods
    assert all(math.isfinite(r["median_step_s"]) and r["median_step_s"] > 0 for r in records)
    step = {r["method"]: r["step_tflop"] for r in records}  # eupmu's own extra retain forward
    assert step["eupmu:next"] > step["weighted"] > 0 and step["eupmu-fast"] == pytest.approx(step["weighted"])
    same = (step["weighted"], step["weighted+apart"], step["weighted+halves"])  # other calls, the same work
    assert step["weighted+joint"] == pytest.approx(same[0]) and same[0] == same[1] == same[2]
    calls = {r["method"]: r["unet_calls_per_step"] for r in records}
    # the frozen targets in one call, or one by one (+apart); forget and retain trained as one call (the
    # default, +joint), or apart (+halves); explicit always trains them apart
    assert (calls["weighted"], calls["weighted+joint"], calls["weighted+halves"]) == (2, 2, 3)
    assert (calls["weighted+apart"], calls["explicit"]) == (4, 3)


@pytest.mark.slow
def test_the_end_to_end_erase_runs_with_trajectory(tmp_path):
    argv = ["--smoke", "--e2e", "--parameters", "xattn", "--set", "x_source=trajectory"]
    (record,) = run_script("bench_scale.py", *argv, tmp_path=tmp_path)
    assert record["set"] == ["x_source=trajectory"] and record["total_s"] > 0
    assert record["setup_pflop"] > 0 and record["train_pflop"] > 0 and record["train_tflop_per_s"] > 0


@pytest.mark.slow
def test_the_step_cost_script_times_its_variants_and_the_unet_calls(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import bench_step_cost

    quick = ["--repeats", "1", "--warmup", "1", "--batch-size", "2", "--output", str(tmp_path)]
    asked = ["eupmu-fast, x_t on frozen paths", "weighted, frozen calls apart"]
    result = bench_step_cost.main([*quick, "--variants", *asked])
    assert [r["variant"] for r in result["rows"]] == ["weighted", *asked]
    calls = bench_step_cost.main([*quick, "--forwards"])
    assert [r["call"] for r in calls["rows"]][0] == "frozen forward" and len(calls["rows"]) == 4


@pytest.mark.slow
def test_the_families_script_generates_trains_and_round_trips_a_single_file(tmp_path):
    record = run_script("bench_families_gpu.py", "--smoke", "--families", "sd21", tmp_path=tmp_path)[
        -1
    ]  # after each part
    assert record["family"] == "sd21" and record["generate"]["s_per_image"] > 0
    assert {r["method"] for r in record["train"]} >= {"none", "eupmu", "explicit"}
    assert record["single_file"]["unet_bit_exact"] and record["single_file"]["network_attempts"] == 0


@pytest.mark.slow
def test_the_profile_counts_a_steps_unet_calls(tmp_path):
    argv = ["--smoke", "--profile", "--parameters", "xattn", "--batch", "1", "--steps", "1", "--e2e-method", "weighted"]
    (record,) = run_script("bench_scale.py", *argv, tmp_path=tmp_path)
    # weighted on the bank: forget and retain through the trained UNet as one call, the frozen targets in one
    assert record["method"] == "weighted" and record["unet_calls_per_step"] == 2
    assert record["wall_per_step_s"] > 0 and record["host_hot_spots"]


def test_settings_written_as_text_take_their_fields_types(monkeypatch):
    """`--set KEY=VALUE` (bench_scale, count_flops) and bench_tradeoff's `field=value` labels: by
    the field's type, not its default's (joint_forward's default is None, lambda_lr's too)."""
    from erase.config import TrainConfig
    from erase.config_args import value_from_text

    monkeypatch.syspath_prepend(str(SCRIPTS))
    import bench_scale
    import bench_tradeoff

    assert value_from_text(TrainConfig, "joint_forward", "false") is False
    assert value_from_text(TrainConfig, "lambda_lr", "3e4") == 30000.0
    assert value_from_text(TrainConfig, "steps", "9") == 9
    assert value_from_text(TrainConfig, "lambda_lr", "none") is None
    with pytest.raises(ValueError, match="true or false"):
        value_from_text(TrainConfig, "joint_forward", "maybe")
    label = "lambda_lr=3e4,joint_forward=false,bank_steps=10,x_source=trajectory"
    expected = {"lambda_lr": 30000.0, "joint_forward": False, "bank_steps": 10, "x_source": "trajectory"}
    assert bench_tradeoff._free_setting(label) == expected
    assert bench_tradeoff._free_setting("joint_forward=maybe") is None
    assert bench_scale._typed(label.split(",")) == expected
