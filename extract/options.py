"""Command-line options derived from settings dataclasses, so each default is written once.

A settings field becomes an option when it is declared with `option(default, help, ...)`:

    @dataclasses.dataclass(frozen=True)
    class FrameSettings(ClipSettings):
        jpeg_quality: int = option(90, "JPEG quality of the stored frames (0-100)")

`add_options(parser, FrameSettings)` then adds `--jpeg-quality` (type, default, choices and
help taken from the field), and `settings_from(args, FrameSettings)` builds the settings back
from the parsed arguments. The dataclass stays the one place a default lives: its value in
Python, in settings.json and in `--help` cannot drift apart.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Sequence, TypeVar

T = TypeVar("T")


def option(default: Any, help: str, *, choices: Sequence[Any] | None = None, flag: str | None = None,
           type: type | None = None) -> Any:
    """A dataclass field that is also a command-line option.

    `flag` names the option when `--field-name` would clash with another one (the flow stage's
    `backend` is `--flow-backend`, beside the runner's `--backend`); `type` is needed only when
    the default is None."""
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None, "flag": flag, "type": type}
    return dataclasses.field(default=default, metadata=meta)


def cli_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of a settings dataclass that are command-line options, in declaration order."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def dest_of(f: dataclasses.Field) -> str:
    """The attribute of the parsed arguments that holds a field's value."""
    return flag_of(f).lstrip("-").replace("-", "_")


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type) -> None:
    """Add one option per `option(...)` field of `cls`: its flag, type, default, choices and help."""
    for f in cli_fields(cls):
        kind = f.metadata.get("type") or type(f.default)
        kwargs: dict[str, Any] = {"dest": dest_of(f), "default": f.default, "help": f.metadata["help"]}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind
        if f.metadata.get("choices") is not None:
            kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(flag_of(f), **kwargs)


def settings_from(args: argparse.Namespace, cls: type[T], **given: Any) -> T:
    """`cls` built from the options `add_options(parser, cls)` added, plus `given` fields."""
    values = {f.name: getattr(args, dest_of(f)) for f in cli_fields(cls)}
    return cls(**{**values, **given})
