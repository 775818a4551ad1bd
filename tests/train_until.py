"""`python tests/train_until.py N erase-args...`: run the `erase` CLI, but raise KeyboardInterrupt
in the N-th training step on every process — a kill between checkpoints that hits all ranks at
the same point, for resume tests run under torchrun (monkeypatching needs a process of its own)."""

from __future__ import annotations

import sys

from erase import loop
from erase.cli import main

stop_at = int(sys.argv.pop(1))
real_step = loop.ErasureRun.train_step
calls = []


def stopping_step(self):
    calls.append(1)
    if len(calls) == stop_at:
        raise KeyboardInterrupt
    return real_step(self)


loop.ErasureRun.train_step = stopping_step
sys.exit(main(sys.argv[1:]))
