"""``nmt plugins NAME``: the recipe keys a plugin takes, read from its pydantic ``Config`` classes.

A task's ``data:`` and ``model:`` sections (``DataConfig``, ``ModelConfig``), a component's options
(``Config``): each key with its type and bounds, its default (or ``required``) and the comment its
source gives it on the same line, so that a recipe writer needs neither the README nor the source.
"""
from __future__ import annotations

import inspect
import json
import re
import typing
from collections.abc import Sequence
from typing import Any, NamedTuple

import click

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from nmt.errors import UserError, closest
from nmt.recipe import _plugin_kind
from nmt.recipe_trainer import _describe_type


class Key(NamedTuple):
    """One recipe key: its dotted path, what it takes, its default and what its source says of it."""

    path: str
    takes: str
    default: str
    note: str


def plugin_keys(kind: str, cls: type) -> list[Key]:
    """The keys of a registered plugin: a task's ``data.*`` and ``model.*``, a component's options."""
    if kind == "task":
        sections = [(f"{name}.", getattr(cls, attribute, None))
                    for name, attribute in (("data", "DataConfig"), ("model", "ModelConfig"))]
    else:
        sections = [("", getattr(cls, "Config", None))]
    return [key for prefix, model in sections if _is_model(model) for key in _walk(model, prefix)]


def _walk(model: type[BaseModel], prefix: str, optional: str = "") -> list[Key]:
    """``optional``: the section ``model`` fills is optional (null by default): its keys are required in it."""
    notes = _line_comments(model)
    keys = []
    for name, info in model.model_fields.items():
        path, note = prefix + name, notes.get(name, "")
        kind = _plugin_kind(list(info.metadata), info.annotation)
        section = _section_model(info.annotation)
        default = _default(info)
        if default == "required" and optional:
            default = f"required in {optional}"
        if kind is not None:
            keys.append(Key(path, f"a registered {kind}: {{name: ..., its options}}", default, note))
        elif section is not None:
            keys.extend(_walk(section, path + ".", optional=path if _default(info) == "null" else optional))
        else:
            keys.append(Key(path, _takes(info), default, note))
    return keys


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The nested section a field holds (also an Optional one), or None for a plain value."""
    if _is_model(annotation):
        return annotation
    models = [arg for arg in typing.get_args(annotation) if _is_model(arg)]
    return models[0] if len(models) == 1 and len(typing.get_args(annotation)) <= 2 else None


_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


def _takes(info: FieldInfo) -> str:
    """``an integer, > 0, <= 65536``: the type as a recipe writer reads it, and its bounds."""
    bounds = [f"{sign} {getattr(item, attribute):g}" if isinstance(getattr(item, attribute), float)
              else f"{sign} {getattr(item, attribute)}"
              for item in info.metadata for attribute, sign in _BOUNDS if hasattr(item, attribute)]
    return ", ".join([_describe_type(info.annotation), *bounds])


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        value = value.model_dump()
    try:
        return json.dumps(value)
    except TypeError:
        return repr(value)


_FIELD_LINE = re.compile(r"^\s+(\w+)\s*:[^#]*#\s*(.+?)\s*$")


def _line_comments(model: type) -> dict[str, str]:
    """The comment at the end of each field's line in the source of ``model`` and its bases."""
    notes: dict[str, str] = {}
    for cls in reversed([c for c in model.__mro__ if _is_model(c) and c is not BaseModel]):
        try:
            source = inspect.getsource(cls)
        except (OSError, TypeError):  # defined where no source is kept (a REPL, a zip without it)
            continue
        for line in source.splitlines():
            found = _FIELD_LINE.match(line)
            if found and found[1] in cls.model_fields:
                notes[found[1]] = found[2]
    return notes


def print_plugin_keys(entries: list, names: Sequence[str]) -> None:
    """``nmt plugins NAME ...``: each plugin of each name, then its keys, one a line."""
    for name in names:
        found = [e for e in entries if e.name == name]
        if not found:
            close = closest(name, sorted({e.name for e in entries}))
            hint = f"; did you mean '{close}'?" if close else ""
            raise UserError(f"nmt plugins {name}", f"no plugin of that name{hint}")
        for entry in found:
            click.echo(f"{entry.kind} {entry.name} ({entry.origin}): {entry.description}")
            keys = plugin_keys(entry.kind, entry.cls)
            width = max((len(k.path) for k in keys), default=0)
            for key in keys:
                note = f"  # {key.note}" if key.note else ""
                default = key.default if key.default.startswith("required") else f"default {key.default}"
                click.echo(f"  {key.path:<{width}}  {key.takes}; {default}{note}")
