"""Typed dataclass configs ↔ argparse: one definition serves the CLI and the Python API.

Each dataclass field becomes ``--field-name``; its ``metadata["help"]`` is the help text,
``Literal[...]`` types become ``choices``, booleans become switches, and fields without a
default are required. Validation stays in the dataclass's ``__post_init__``.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, TypeVar

T = TypeVar("T")


def unwrap_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def add_dataclass_arguments(
    parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = (), layered: bool = False
) -> None:
    """Add one flag per field of dataclass ``cls`` (except ``skip``).

    ``layered``: flags the user did not give stay out of the namespace (argparse.SUPPRESS), so
    ``dataclass_from_layers`` can put them over a config file's values over the field defaults.
    """
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        flag = "--" + field.name.replace("_", "-")
        hint = unwrap_optional(hints[field.name])
        kwargs: dict[str, Any] = {"dest": field.name, "help": field.metadata.get("help", "")}
        has_default = field.default is not dataclasses.MISSING
        if hint is bool:
            # a switch that may be on by default (True, or None: decided by other settings) can be turned off
            kwargs["action"] = "store_true" if field.default is False else argparse.BooleanOptionalAction
            kwargs["default"] = argparse.SUPPRESS if layered else field.default
        else:
            if typing.get_origin(hint) is Literal:
                kwargs["choices"] = list(typing.get_args(hint))
                kwargs["type"] = type(kwargs["choices"][0])
            else:
                kwargs["type"] = hint
            if has_default:
                kwargs["default"] = argparse.SUPPRESS if layered else field.default
                if field.default is not None:
                    kwargs["help"] += f" (default: {field.default})"
            elif layered:
                kwargs["default"] = argparse.SUPPRESS
                kwargs["help"] += " (required, here or in --config)"
            else:
                kwargs["required"] = True
        parser.add_argument(flag, **kwargs)


def dataclass_from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**(values | overrides))


def read_config_file(path: str, cls: type) -> dict[str, Any]:
    """Values from a .toml, .yaml/.yml or .json file whose keys are ``cls``'s fields (dashes or
    underscores). Unknown keys are refused with the list of known ones, and every value is checked
    against its field's type, naming the file and the key."""
    import json
    from pathlib import Path

    from prompts.checks import check_value
    from prompts.errors import InputError

    file = Path(path).expanduser()
    if not file.is_file():  # a FIFO would block the read forever
        what = "is not a regular file" if file.exists() else "file not found"
        raise InputError(f"--config {path}: {what}")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"--config {path}: not UTF-8 text; save the file as UTF-8") from None
    try:
        if file.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif file.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif file.suffix == ".json":
            data = json.loads(text)
        else:
            raise InputError(f"--config {path}: unsupported format {file.suffix!r}; use .toml, .yaml or .json")
    except InputError:
        raise
    except Exception as err:  # the parsers' own error types differ; all mean "not valid syntax"
        raise InputError(f"--config {path}: cannot parse ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError(f"--config {path}: expected a table of settings at the top level")
    known = {f.name for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise InputError(f"--config {path}: unknown key {key!r}; {hint}known keys: {', '.join(sorted(known))}")
        if file.suffix in (".yaml", ".yml") and unwrap_optional(hints[name]) is float and isinstance(value, str):
            value = _yaml_float(value)  # YAML 1.1 reads 1e-5 (no dot) as text
        check_value(cls, name, value, where=f"--config {path}")
        values[name] = value
    return values


def _yaml_float(text: str):
    """``1e-5`` as the number it means; any other text as it was (the type check names it)."""
    try:
        return float(text)
    except ValueError:
        return text


def dataclass_from_layers(cls: type[T], args: argparse.Namespace, file_values: dict[str, Any] | None = None) -> T:
    """Field defaults < config file < flags given on the command line."""
    from prompts.errors import InputError

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    values = (file_values or {}) | given
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise InputError(f"--{missing[0].replace('_', '-')} is required (on the command line or in --config)")
    return cls(**values)


def value_from_text(cls: type, name: str, text: str) -> Any:
    """A field's value from text such as ``KEY=VALUE`` in the benchmark scripts, of the field's own
    type (not its default's: a switch whose default is None is still a switch). Raises ValueError
    for text that is not of that type."""
    hint = typing.get_type_hints(cls)[name]
    if text.lower() in ("none", "null") and unwrap_optional(hint) is not hint:
        return None
    kind = unwrap_optional(hint)
    if typing.get_origin(kind) is Literal:
        kind = type(typing.get_args(kind)[0])
    if kind is bool:  # bool("false") is True
        if text.lower() not in ("true", "false", "on", "off", "1", "0"):
            raise ValueError(f"{name}={text}: give true or false")
        return text.lower() in ("true", "on", "1")
    return kind(text) if kind in (int, float, str) else text
