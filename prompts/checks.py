"""Checks every typed config (generate, train, eval) applies to its values, whichever way they
came in: flags, a config file, or the Python API.

argparse already converts flags to their field's type; a config file or a Python caller can hand
over anything (``steps: "ten"``, ``steps = 2.5``, a list where a string belongs, a NUL inside a
path). Each value is checked against its field's annotation here, so the message names the
field and what it needs instead of a traceback from deep inside torch. This module lives in
``prompts/`` because every other package imports it.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, Literal

from prompts.errors import InputError

MAX_SEED = 2**63 - 1  # torch generators take < 2**64; the rest is room for per-image offsets


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def type_problem(hint: Any, value: Any) -> str | None:
    """What ``value`` would need to be to fit ``hint``, or None if it fits."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if any(type_problem(option, value) is None for option in options):
            return None
        return type_problem(next(o for o in options if o is not type(None)), value)
    if origin is Literal:
        choices = typing.get_args(hint)
        return None if value in choices else "one of " + ", ".join(repr(c) for c in choices)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            return "a list"
        return next((f"a list of {p}" for v in value if (p := type_problem(item, v))), None)
    if hint is type(None):
        return None if value is None else "empty (null)"
    if hint is bool:
        return None if isinstance(value, bool) else "true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "a whole number"
    if hint is float:
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    if hint is str:
        if not isinstance(value, str):
            return "a string"
        return "a string without NUL characters" if "\x00" in value else None
    return None


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_value(cls: type, name: str, value: Any, where: str | None = None) -> None:
    """Refuse ``value`` for field ``name`` of dataclass ``cls``; ``where`` names a config file."""
    problem = type_problem(_hints(cls)[name], value)
    if problem is not None:
        what = f"{where}: {name}" if where else flag(name)
        raise InputError(f"{what} must be {problem}, got {value!r}"[:300])


def check_types(instance: Any) -> None:
    """Check every field of a dataclass instance against its annotation (call from __post_init__)."""
    for field in dataclasses.fields(instance):
        check_value(type(instance), field.name, getattr(instance, field.name))


def check_seed(seed: int, option: str = "--seed") -> None:
    if not 0 <= seed <= MAX_SEED:
        raise InputError(f"{option} must be between 0 and 2**63 - 1, got {seed}")
