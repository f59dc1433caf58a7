"""Reading values into knob dataclasses (raypipe.config.knob): a config's fields walked into `Option`s (their keys,
flags, types, defaults), values coerced to the field's type, a config file's nested mapping flattened with unknown
keys refused ("did you mean"), and the dataclass built from them. One machinery for every command's options and for
files of no command (an experiment's config.json).

A `Command` names what is read: its config dataclass, the fields it leaves out, those given as positional arguments,
and how messages call it. raypipe.options holds the commands (`COMMANDS`) and adds the command line (typer), the YAML
form and the docs' tables; raypipe.tasks.experiment reads config.json here directly.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import types
import typing
from dataclasses import MISSING, dataclass
from typing import Any

from raypipe.config import DEFAULT_PRESET, PRESETS, ModelConfig, choices_of, flag_of, get_preset
from raypipe.errors import UserError

NoneType = type(None)


@dataclass(frozen=True)
class Command:
    """What a reader reads: a command's config (or a file's), as messages and headings name it."""

    name: str  # `raypipe NAME`, or a file's short name
    config: type  # the config dataclass
    exclude: tuple[str, ...] = ()  # fields of the dataclass this command does not use
    # Top-level fields (knob cli=False) given as the command's positional arguments, or by the config file.
    arguments: tuple[str, ...] = ()
    title: str = ""  # the command line, where it is not `raypipe NAME`; a file's name
    file: bool = False  # a file of no command (no flags; its messages name the file, not a command)

    @property
    def heading(self) -> str:
        return self.title or f"raypipe {self.name}"


@dataclass(frozen=True)
class Option:
    """One field of a command's config, wherever it sits in the nested sections."""

    path: tuple[str, ...]  # config-file keys from the top: ('model', 'vllm', 'tp'); ('model', 'preset') for .name
    names: tuple[str, ...]  # the field names along the path: ('model', 'name')
    field: dataclasses.Field
    hint: Any  # the field's resolved type
    section: type  # the dataclass the field is in
    preset_default: bool  # the default comes from the preset (a build's model section)

    @property
    def key(self) -> str:
        return ".".join(self.path)

    @property
    def param(self) -> str:
        """The Python parameter name of its typer option."""
        return "__".join(self.path)

    @property
    def flags(self) -> tuple[str, ...]:
        return self.field.metadata.get("flags") or (flag_of(self.field),)

    @property
    def cli(self) -> bool:
        return self.field.metadata.get("cli", True)

    @property
    def help(self) -> str:
        return self.field.metadata.get("help", "")

    @property
    def from_preset(self) -> bool:
        """Its default is the preset's value (a build's model fields, but for the preset's own name)."""
        return self.preset_default and self.path[-1] != "preset"

    @property
    def required(self) -> bool:
        return (self.field.default is MISSING and self.field.default_factory is MISSING
                and not self.preset_default)

    @property
    def default(self) -> Any:
        """The value used when neither a file nor a flag gives one (MISSING for required fields)."""
        if self.preset_default:
            value: Any = PRESETS[DEFAULT_PRESET]
            for name in self.names[1:]:
                value = getattr(value, name)
            return value
        if self.field.default_factory is not MISSING:
            return self.field.default_factory()
        return self.field.default


def _key(config_field: dataclasses.Field) -> str:
    return config_field.metadata.get("key") or config_field.name


def _walk(config_class: type, prefix: tuple[str, ...] = (), names: tuple[str, ...] = (),
          in_preset: bool = False) -> list[Option]:
    hints = typing.get_type_hints(config_class)
    found = []
    for config_field in dataclasses.fields(config_class):
        hint, path, here = hints[config_field.name], (*prefix, _key(config_field)), (*names, config_field.name)
        if dataclasses.is_dataclass(hint):
            found += _walk(hint, path, here, in_preset or hint is ModelConfig)
        else:
            found.append(Option(path, here, config_field, hint, config_class, in_preset))
    return found


@functools.cache
def fields_of(spec: Command) -> tuple[Option, ...]:
    """Every option of a command, in declaration order (top-level fields first, then each section's)."""
    found = [o for o in _walk(spec.config) if o.field.name not in spec.exclude or len(o.path) > 1]
    found.sort(key=lambda o: len(o.path) > 1)  # stable: the sections keep their order
    flags = [flag for o in found if o.cli for flag in o.flags]
    duplicated = {flag for flag in flags if flags.count(flag) > 1}
    assert not duplicated, f"{spec.name}: flags declared twice: {duplicated}"
    return tuple(found)


def sections_of(spec: Command) -> set[tuple[str, ...]]:
    return {o.path[:i] for o in fields_of(spec) for i in range(1, len(o.path))}


# --- values: coercion, config files, resolution --------------------------------------------------------------------

def alternatives(hint: Any) -> tuple:
    """The members of a union type (`int | str | None`), or the type alone."""
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


def describe_type(hint: Any) -> str:
    choices = choices_of(hint)
    args = [a for a in alternatives(hint) if a is not NoneType]
    if choices:
        text = "one of " + ", ".join(str(c) for c in choices)
    else:
        text = " or ".join(f"list of {typing.get_args(a)[0].__name__}" if typing.get_origin(a) in (list, tuple)
                           else a.__name__ for a in args)
    return text + (" (or null)" if NoneType in alternatives(hint) else "")


def _whole(value: Any) -> bool:
    """A whole number, or its text ('42'): what a list of int takes from a flag or a file."""
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value) is not None)


def coerce(value: Any, hint: Any, key: str) -> Any:
    """A value from a YAML file (or a flag) as the field's type; the field's own checks come after, in the dataclass.

    YAML reads `layers: -1` as a number: a whole number given for a text field becomes its text, and text that is a
    whole number becomes the number where a field takes either (`position: '-1'`)."""
    args = alternatives(hint)
    if value is None:
        if NoneType in args:
            return None
        raise UserError(f"{key} must be {describe_type(hint)}, got null")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    for kind in (a for a in args if a is not NoneType):
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is int and str in args and isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
            return int(value)
        if kind is float and number:
            return float(value)
        if kind is float and isinstance(value, str) and re.fullmatch(r"\s*[-+]?[\d.]+e[-+]?\d+\s*", value, re.I):
            return float(value)  # YAML 1.1 reads 1e-3 (no dot) as text
        if (kind is str or typing.get_origin(kind) is typing.Literal) and isinstance(value, str):
            return value
        if kind is str and isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if typing.get_origin(kind) in (list, tuple):  # list[str], list[int], tuple[str, ...]; a lone value: one item
            items, make, item_type = (list(value) if isinstance(value, (list, tuple)) else [value],
                                      typing.get_origin(kind), typing.get_args(kind)[0])
            if item_type is int and all(_whole(item) for item in items):
                return make(int(item) for item in items)
            if item_type is str and all(isinstance(item, (str, int, float)) and not isinstance(item, bool)
                                        for item in items):
                return make(str(item) for item in items)
    raise UserError(f"{key} must be {describe_type(hint)}, got {value!r}")


def _unknown(path: tuple[str, ...], name: str, spec: Command, where: str) -> UserError:
    """One line: the unknown key with its section, and the closest valid key (difflib): in the same section, else
    the same name in another section, else the section's keys."""
    valid = [o.path for o in fields_of(spec)] + sorted(sections_of(spec))
    here = [p[-1] for p in valid if p[:-1] == path]
    close = difflib.get_close_matches(name, here, n=1, cutoff=0.6)
    if close:
        suggestion = f"did you mean {'.'.join((*path, close[0]))!r}?"
    else:
        elsewhere = difflib.get_close_matches(name, [p[-1] for p in valid], n=1, cutoff=0.8)
        suggestion = (f"did you mean {'.'.join(next(p for p in valid if p[-1] == elsewhere[0]))!r}?" if elsewhere else
                      f"{'.'.join(path) or 'the top level'} takes: {', '.join(here)}")
    for_command = "" if spec.file else f" for `{spec.heading}`"
    return UserError(f"{where}: unknown key {'.'.join((*path, name))!r}{for_command}; {suggestion}")


def flatten_file(data: dict, spec: Command, where: str) -> dict[tuple[str, ...], Any]:
    """A config file's nested mapping as {key path: value}, refusing unknown keys and misplaced sections."""
    hints = {o.path: o.hint for o in fields_of(spec)}
    keys, sections = set(hints), sections_of(spec)
    flat: dict[tuple[str, ...], Any] = {}

    def visit(mapping: dict, path: tuple[str, ...]) -> None:
        for name, value in mapping.items():
            here = (*path, str(name))
            if here in sections:
                if value is None:
                    continue
                if not isinstance(value, dict):
                    raise UserError(f"{where}: {'.'.join(here)} is a section (keys below it), got {value!r}")
                visit(value, here)
            elif here in keys:
                if isinstance(value, dict):
                    raise UserError(f"{where}: {'.'.join(here)} takes a value, not a section")
                flat[here] = coerce(value, hints[here], f"{where}: {'.'.join(here)}")
            else:
                raise _unknown(path, str(name), spec, where)

    visit(data, ())
    return flat


def construct(config_class: type, values: dict[tuple[str, ...], Any], spec: Command,
              prefix: tuple[str, ...] = (), base: Any = None) -> Any:
    """A config dataclass from {key path: value}; nested sections recursively; the dataclass checks the values."""
    hints = typing.get_type_hints(config_class)
    if config_class is ModelConfig:  # a model section starts from its preset
        preset = values.get((*prefix, "preset"), DEFAULT_PRESET)
        base = get_preset(coerce(preset, str, ".".join((*prefix, "preset"))))
    kwargs = {}
    for config_field in dataclasses.fields(config_class):
        path, hint = (*prefix, _key(config_field)), hints[config_field.name]
        if dataclasses.is_dataclass(hint):
            kwargs[config_field.name] = construct(hint, values, spec, path,
                                                  getattr(base, config_field.name) if base is not None else None)
        elif path in values:
            kwargs[config_field.name] = coerce(values[path], hint, ".".join(path))
        elif base is not None:
            kwargs[config_field.name] = getattr(base, config_field.name)
        elif config_field.default is MISSING and config_field.default_factory is MISSING:
            argument = not prefix and config_field.name in spec.arguments
            name = config_field.name.upper() if argument else flag_of(config_field)
            raise UserError(f"missing {name} (or `{'.'.join(path)}:` in a --config file)")
    return config_class(**kwargs)


def from_mapping(spec: Command, data: Any, where: str) -> Any:
    """A config from a file's parsed mapping (an experiment's config.json), as a config file is read: unknown keys
    and wrong types refused, then the dataclass's own checks; every message starts with `where`."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: must be a mapping of keys to values (a JSON object), got {type(data).__name__}")
    values = flatten_file(data, spec, where)
    try:
        return construct(spec.config, values, spec)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None


# --- what a config declares, by dotted field name (as `to_dict()` names them: `model.vllm.tp`) ----------------------

def _dotted(config_class: type) -> list[tuple[str, Option]]:
    return [(".".join(option.names), option) for option in _walk(config_class)]


def declared_defaults(config_class: type) -> dict[str, Any]:
    """Dotted field name -> the field's declared default, for every field that has one. A config recorded before a
    field existed lacks its key; compared as this default, a build made then still resumes."""
    return {name: o.field.default_factory() if o.field.default_factory is not MISSING else o.field.default
            for name, o in _dotted(config_class)
            if o.field.default is not MISSING or o.field.default_factory is not MISSING}


def runtime_fields(config_class: type) -> set[str]:
    """Dotted names of the fields declared runtime=True (config.knob): a resume may change them."""
    return {name for name, o in _dotted(config_class) if o.field.metadata.get("runtime")}


def recorded_config(config_class: type, recorded: dict[str, Any]) -> dict[str, Any]:
    """A config as an earlier release recorded it, read by this one: a null where a field no longer takes None (it
    was optional then, and left unset: `labels.nli_model` before it had a default) is dropped, so that the declared
    default stands for it."""
    not_nullable = {name for name, o in _dotted(config_class) if NoneType not in alternatives(o.hint)}

    def keep(section: dict[str, Any], prefix: str) -> dict[str, Any]:
        return {key: keep(value, f"{prefix}{key}.") if isinstance(value, dict) else value
                for key, value in section.items() if not (value is None and prefix + key in not_nullable)}

    return keep(recorded, "")
