"""Typed dataclass configs ↔ argparse: one definition serves the CLI and the Python API.

Each dataclass field becomes ``--field-name``; its ``metadata["help"]`` is the help text,
``Literal[...]`` types become ``choices``, booleans become switches, and fields without a
default are required. Validation stays in the dataclass's ``__post_init__``.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Literal, TypeVar

T = TypeVar("T")


def _unwrap_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one flag per field of dataclass ``cls`` (except ``skip``)."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        flag = "--" + field.name.replace("_", "-")
        hint = _unwrap_optional(hints[field.name])
        kwargs: dict[str, Any] = {"dest": field.name, "help": field.metadata.get("help", "")}
        has_default = field.default is not dataclasses.MISSING
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction if field.default else "store_true"
            kwargs["default"] = field.default
        else:
            if typing.get_origin(hint) is Literal:
                kwargs["choices"] = list(typing.get_args(hint))
                kwargs["type"] = type(kwargs["choices"][0])
            else:
                kwargs["type"] = hint
            if has_default:
                kwargs["default"] = field.default
                if field.default is not None:
                    kwargs["help"] += f" (default: {field.default})"
            else:
                kwargs["required"] = True
        parser.add_argument(flag, **kwargs)


def dataclass_from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**(values | overrides))
