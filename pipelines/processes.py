"""Which process this is, under ``accelerate launch`` / ``torchrun`` or alone.

``PartialState`` only treats CPU processes as a group when told to use the CPU, which
``accelerate launch --cpu`` (and ``ACCELERATE_USE_CPU=true torchrun ...``) say through the
environment; ``Accelerator`` reads that flag itself, ``PartialState`` does not.
"""

from __future__ import annotations

from accelerate import PartialState
from accelerate.utils import parse_flag_from_env


def process_state() -> PartialState:
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def is_main_process() -> bool:
    """True alone, or for the one process that prints and writes shared files."""
    return process_state().is_main_process
