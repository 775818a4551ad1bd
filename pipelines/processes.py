"""Which process this is, under ``accelerate launch`` / ``torchrun`` or alone.

``PartialState`` only treats CPU processes as a group when told to use the CPU, which
``accelerate launch --cpu`` (and ``ACCELERATE_USE_CPU=true torchrun ...``) say through the
environment; ``Accelerator`` reads that flag itself, ``PartialState`` does not.
"""

from __future__ import annotations

import sys

from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import parse_flag_from_env


def process_state() -> PartialState:
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def is_main_process() -> bool:
    """True alone, or for the one process that prints and writes shared files."""
    return process_state().is_main_process


def accelerator_for(mixed_precision: str) -> Accelerator:
    """An ``Accelerator`` with this run's precision. accelerate fixes one precision per Python
    process for good and refuses another later, so a second run in the same process (the Python
    API, a notebook, a sweep) with another ``--mixed-precision`` would fail; alone, the shared
    state is started afresh (under a launcher every process runs one configuration anyway)."""
    settled = AcceleratorState._shared_state.get("_mixed_precision")
    if settled not in (None, mixed_precision) and process_state().num_processes == 1:
        AcceleratorState._reset_state()  # accelerate's own tests reset it the same way
    return Accelerator(mixed_precision=mixed_precision)


def close_process_group() -> None:
    """Tear the process group down while the interpreter is still whole. Left to interpreter
    finalisation, gloo's worker threads can free tensors after Python is gone and the process
    dies with SIGABRT at exit (pytorch/pytorch#179291): a finished ``torchrun`` run then reports
    failure. Alone (no group started) this does nothing."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception as err:  # noqa: BLE001 - the command's own result stands; say why teardown failed
            print(f"warning: could not close the process group cleanly ({err})", file=sys.stderr)
