"""A kill between checkpoints: the N-th training step raises KeyboardInterrupt.

``killed_in_step(n)`` does it in this process (the in-process resume tests);
`python tests/train_until.py N erase-args...` runs the `erase` CLI with it on every process, so
that under torchrun all ranks stop at the same point (monkeypatching needs a process of its own)."""

from __future__ import annotations

import contextlib
import sys

from erase import loop


@contextlib.contextmanager
def killed_in_step(stop_at: int):
    """While the block runs, the ``stop_at``-th call of a training step raises KeyboardInterrupt
    (counted from the block's start); the real step is back afterwards."""
    real_step, calls = loop.ErasureRun.train_step, []

    def stopping_step(self):
        calls.append(1)
        if len(calls) == stop_at:
            raise KeyboardInterrupt
        return real_step(self)

    loop.ErasureRun.train_step = stopping_step
    try:
        yield
    finally:
        loop.ErasureRun.train_step = real_step


if __name__ == "__main__":
    from erase.cli import main

    with killed_in_step(int(sys.argv.pop(1))):
        sys.exit(main(sys.argv[1:]))
