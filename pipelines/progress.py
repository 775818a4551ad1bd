"""Progress for long work: a live bar on a terminal, a few plain lines anywhere else.

A tqdm bar redraws itself many times a second. On a terminal that is one line; written into a
CI log or a file it is hundreds of lines per run. So the bar is used only when standard error
is a terminal; otherwise a line is written at most every ``LINE_EVERY_S`` seconds and once at
the end, each saying how far the work is and how long it has run.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

LINE_EVERY_S = 10.0

T = TypeVar("T")


def _on_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


class LineProgress:
    """The tqdm methods the project uses (``update``, ``set_postfix``, ``close``), written as
    occasional lines: ``erase (eupmu): 40/200 steps (20%), 12 s, l_u=0.0123``."""

    def __init__(self, total: int, desc: str, unit: str, initial: int = 0, every: float | None = None, clock=None):
        self.total, self.desc, self.unit = total, desc, unit
        self.every = LINE_EVERY_S if every is None else every
        self.clock = clock or time.monotonic
        self.n = initial
        self.start = self.last = self.clock()
        self.postfix = ""
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last >= self.every and self.n < self.total:
            self._write(now)

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._write(self.clock(), done=True)

    def _write(self, now: float, done: bool = False) -> None:
        self.last = now
        share = f" ({self.n / self.total:.0%})" if self.total else ""
        tail = f", {self.postfix}" if self.postfix else ""
        word = "done, " if done else ""
        line = f"{self.desc}: {self.n}/{self.total} {self.unit}{share}, {word}{now - self.start:.0f} s{tail}"
        print(line, file=sys.stderr, flush=True)


class _Silent:
    def update(self, n: int = 1) -> None: ...

    def set_postfix(self, **values) -> None: ...

    def close(self) -> None: ...


def progress(total: int, desc: str, unit: str = "it", enabled: bool = True, initial: int = 0):
    """A progress reporter for ``total`` units of work: tqdm on a terminal, occasional lines
    elsewhere, nothing when not ``enabled`` (``--no-progress``, or a process that is not the
    main one)."""
    if not enabled:
        return _Silent()
    if _on_terminal():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial)
    return LineProgress(total, desc, unit, initial=initial)


def track(items: Iterable[T], total: int, desc: str, unit: str = "it", enabled: bool = True) -> Iterator[T]:
    """``items``, reporting progress as they are consumed."""
    bar = progress(total, desc, unit, enabled)
    for item in items:
        yield item
        bar.update(1)
    bar.close()
