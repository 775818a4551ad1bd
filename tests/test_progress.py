"""Progress output: a live bar only on a terminal; in a log, a line every few seconds at most."""

from __future__ import annotations

import pytest

import pipelines.progress as progress_module
from erase.cli import main
from pipelines.progress import LineProgress, progress


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_line_progress_writes_at_most_one_line_per_interval(capsys):
    clock = FakeClock()
    bar = LineProgress(total=1000, desc="erase (eupmu)", unit="step", every=10.0, clock=clock)
    for _ in range(1000):  # 100 s of work in 0.1 s steps
        clock.now += 0.1
        bar.update(1)
        bar.set_postfix(l_u="0.0123")
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert 9 <= len(lines) <= 11  # one per 10 s, and the last
    assert lines[-1] == "erase (eupmu): 1000/1000 step (100%), done, 100 s, l_u=0.0123"
    assert "\r" not in "".join(lines)


def test_a_terminal_gets_tqdm_and_a_log_gets_lines(monkeypatch):
    from tqdm.auto import tqdm

    monkeypatch.setattr(progress_module, "_on_terminal", lambda: True)
    bar = progress(3, "x")
    assert isinstance(bar, tqdm)
    bar.close()
    monkeypatch.setattr(progress_module, "_on_terminal", lambda: False)
    assert isinstance(progress(3, "x"), LineProgress)
    assert not isinstance(progress(3, "x", enabled=False), LineProgress | tqdm)


@pytest.fixture()
def retain_file(write):
    return write("retain.txt", "a blue square\na green cat\n")


def test_train_into_a_log_writes_a_few_lines_not_a_redraw_per_step(tiny_pipeline_dir, retain_file, tmp_path, capfd):
    """Run as a CI job would (standard error a pipe, not a terminal): 40 steps and the latent
    bank give their final lines only, not a bar redrawn per step."""
    argv = ["train", "--model", str(tiny_pipeline_dir), "--concept", "a red circle", "--retain", str(retain_file)]
    argv += ["--output", str(tmp_path / "run"), "--steps", "40", "--batch-size", "1", "--bank-size", "2"]
    argv += ["--bank-steps", "1"]
    assert main(argv) == 0
    err = capfd.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert any(line.startswith("erase (eupmu-fast): 40/40 step (100%), done") for line in lines), lines
    assert len(lines) <= 6, lines
