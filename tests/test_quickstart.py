"""The README's first command, as a newcomer runs it: set up, erase the digit three from the
default model, evaluate, write the report, and say where to look."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from erase.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_erases_three_and_writes_the_report(tmp_path):
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "quickstart.sh"), str(tmp_path)],
        capture_output=True, text=True, timeout=900, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = tmp_path / "reports" / "quickstart-three"
    assert f"open {report}/report.html" in done.stdout
    assert "\r" not in done.stderr  # not a terminal: progress as a few lines, not a redrawn bar
    scores = json.loads((report / "metrics.json").read_text())["runs"]["quickstart-three"]
    erased, base = scores["erased_model"], scores["base"]
    assert scores["erased"] == [{"class": "three"}]
    assert base["UA"]["value"] <= 0.1  # the base model draws threes the judge recognises
    assert erased["UA"]["value"] >= 0.9 and erased["RA"]["value"] >= 0.95  # three gone, the rest kept
    assert erased["CLIP_score"]["value"] > 0 and "tiny_clip" in erased["CLIP_score"]["definition"]
    page = (report / "report.html").read_text()
    assert "quickstart-three-forget.png" in page and (report / "figures" / "quickstart-three-forget.png").is_file()

    # The run made again in place (deleted by hand and erased anew, or a killed run continued): the
    # report's images of the old weights are the script's own, drawn again rather than refused.
    run, second = tmp_path / "runs" / "quickstart-three", tmp_path / "reports" / "clip-judge"
    weights = run / "unet" / "diffusion_pytorch_model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    again = subprocess.run(
        ["bash", str(ROOT / "scripts" / "quickstart.sh"), str(tmp_path)],
        capture_output=True, text=True, timeout=900, env=env,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((report / "metrics.json").read_text())["runs"]["quickstart-three"]["erased_model"] == erased

    # The open-clip judge with no flags: the shipped tiny CLIP, an independent second opinion.
    argv = ["eval", str(run), "--output", str(second), "--judge", "open-clip", "--images-per-prompt", "2"]
    assert main([*argv, "--no-progress"]) == 0
    scores = json.loads((second / "metrics.json").read_text())
    assert scores["settings"]["judge"] == "open-clip" and scores["settings"]["clip_model"] == "tiny_clip"
    erased = scores["runs"]["quickstart-three"]["erased_model"]
    assert erased["UA"]["value"] >= 0.8 and erased["RA"]["value"] >= 0.85  # measured: 100% and 95.0% at 10 seeds
