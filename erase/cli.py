"""The ``erase`` command: one subcommand per module, registered by name below.

A subcommand module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args)``.
Modules are imported only when their subcommand runs, so ``erase --help`` stays fast and
``erase`` does not import ``eval`` (or the reverse) except to run that command.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import signal
import sys
import threading

from erase import __version__
from pipelines.files import DISK_FULL, as_os_error, describe_os_error
from prompts.errors import InputError

# name -> module path; add a subcommand by writing its module and one line here.
COMMANDS = {
    "generate": "erase.commands.generate",
    "prompts": "erase.commands.prompts",
    "train": "erase.commands.train",
    "export": "erase.commands.export",
    "apply": "erase.commands.apply",
    "eval": "erase.commands.eval",
    "attack": "erase.commands.attack",
    "sweep": "erase.commands.sweep",
}
HELP = {
    "eval": "evaluate erased models: UA/RA/IRA/CRA, FID, CLIP score, and a report",
    "attack": "attack erased models with adversarial prompts: does the concept come back?",
    "generate": "draw images for a prompt list (seeded, batched, resumable)",
    "prompts": "list the shipped prompt lists, or show one",
    "train": "erase a concept: fine-tune the UNet, write a run folder",
    "export": "write a run as a diffusers folder, a single-file checkpoint, a delta or a LoRA",
    "apply": "put a delta or a LoRA of ours onto a base model",
    "sweep": "erase one concept over a grid of a method's knob and seeds; write the erasure-vs-utility front",
}


class OneLineParser(argparse.ArgumentParser):
    """argparse prints the whole usage before an error; we print one line and where to look."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="erase",
        description="Erase concepts from Stable Diffusion models, offline. Run `erase COMMAND --help` for details.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_path in COMMANDS.items():
        if name != command:  # only the chosen command's module is imported
            sub.add_parser(name, help=HELP[name])
            continue
        module = importlib.import_module(module_path)
        child = sub.add_parser(
            name, help=HELP[name], description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(child)
        child.set_defaults(_handler=module.run, _resume_argv=getattr(module, "resume_argv", None))
    return parser


def _chosen_command(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def _quiet_libraries() -> None:
    """Library progress bars and hub warnings would bury our own progress bar."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = None
    if threading.current_thread() is threading.main_thread():
        # A shell starts background jobs with SIGINT ignored, and Python then never raises
        # KeyboardInterrupt: `kill -INT` would be swallowed and the command run to its end.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    code = 1
    try:
        parser = build_parser(_chosen_command(argv))
        args = parser.parse_args(argv)
        _quiet_libraries()
        code = _run(args)
        return code
    except KeyboardInterrupt:  # at any moment, start-up and imports included
        command = getattr(args, "command", None) or _chosen_command(argv)
        hint = getattr(args, "_resume_argv", None)
        again = shlex.join(["erase", *(hint(args, argv) if hint else argv)])
        print(f"erase{' ' + command if command else ''}: interrupted; to continue, run: {again}", file=sys.stderr)
        return 130
    finally:
        # Only after success: a process that failed must not leave a collective the others are
        # still waiting in (they would hang); the launcher ends them when it sees the failure.
        if code == 0 and "torch.distributed" in sys.modules:
            from pipelines.processes import close_process_group

            close_process_group()


def _run(args: argparse.Namespace) -> int:
    try:
        return args._handler(args) or 0
    except InputError as err:
        print(f"erase {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `erase prompts | head`
        return 0
    except Exception as err:  # the disk, not the input: full, read-only, not permitted; or memory
        if _out_of_memory(err):
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            problem = getattr(err, "problem", first)  # pipelines.latents.OutOfMemoryWithFix names its own
            fix = getattr(err, "fix", None) or _MEMORY_HINTS.get(args.command, _MEMORY_HINT)
            print(f"erase {args.command}: error: out of memory ({problem}); {fix}", file=sys.stderr)
            return 2
        os_error = as_os_error(err)  # an OSError, or one that safetensors reports as its own type
        if os_error is None:
            raise
        print(f"erase {args.command}: error: {describe_os_error(os_error)}", file=sys.stderr)
        return 1 if os_error.errno in DISK_FULL else 2


_MEMORY_HINT = "lower --batch-size, or use a smaller model"
_MEMORY_HINTS = {  # what frees memory in each command (measured in the README's GPU table)
    "train": "lower --batch-size, or add --gradient-checkpointing, --half-frozen (with --mixed-precision bf16) or "
    "--offload-encoders, or train --parameters lora",
}


def _out_of_memory(err: BaseException) -> bool:
    """torch's CUDA OutOfMemoryError, Python's MemoryError, or the CPU allocator's RuntimeError."""
    text = str(err)
    return (
        isinstance(err, MemoryError)
        or any(kind.__name__ == "OutOfMemoryError" for kind in type(err).__mro__)  # subclasses too
        or (isinstance(err, RuntimeError) and ("can't allocate memory" in text or "not enough memory" in text))
    )


if __name__ == "__main__":
    sys.exit(main())
