"""Command-line options, config-file keys and the docs' option tables, all derived from the config dataclasses.

A command's options are the fields of its config dataclass (`COMMANDS`), walked into nested sections: a build's are
BuildConfig's own fields at the top level and `model:` (with `vllm:` and `hf:`), `source:`, `features:`, `labels:`.
Each field gives, from its one declaration (`raypipe.config.knob`): the config-file key (dotted in messages:
`model.vllm.tp`), the flag(s) (`--tp`), the type, the default and the help. Values resolve in three layers: the
defaults (for a build's `model:` section, its preset's values), then a `--config` YAML file, then the flags given on
the command line.

A config file holds one command's keys, or is a workflow file with a section per command (`build:`, `train:`,
`sweep:`, `evaluate:`, ..., `finetune:`); there a probe section without `data_dir` reads the build section's `out_dir`.
Files that belong to no command (`FILES`: an experiment's config.json) are read with the same keys, types and
messages (`from_mapping`).

    python -m raypipe.options build        # the build's options as a Markdown table (the docs call options_table)

Light on purpose: it imports the config dataclasses; PyYAML and typer only in the functions that use them.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import re
import sys
import types
import typing
from dataclasses import MISSING, dataclass
from typing import Any, Callable, Optional

from raypipe.config import (
    DEFAULT_PRESET,
    PRESETS,
    BuildConfig,
    ModelConfig,
    choices_of,
    flag_of,
    get_preset,
)
from raypipe.errors import UserError
from raypipe.finetune.config import (
    AnalyzeConfig,
    ExperimentConfig,
    FinetuneCommandConfig,
)
from raypipe.probes.config import EvaluateConfig, ScoreConfig, SweepConfig, TrainConfig

NoneType = type(None)


@dataclass(frozen=True)
class Command:
    config: type  # the command's config dataclass
    exclude: tuple[str, ...] = ()  # fields of the dataclass this command does not use
    # Top-level fields (knob cli=False) given as the command's positional arguments, or by the config file.
    arguments: tuple[str, ...] = ()
    title: str = ""  # the command line, where it is not `raypipe NAME`; a file's name in FILES


COMMANDS = {
    "build": Command(BuildConfig),
    "train": Command(TrainConfig),
    # SweepConfig inherits wandb_project from ProbeInputConfig, but the sweep logs nothing to W&B: no option for it.
    "sweep": Command(SweepConfig, exclude=("wandb_project",)),
    "evaluate": Command(EvaluateConfig),
    "score": Command(ScoreConfig),
    "finetune": Command(FinetuneCommandConfig, arguments=("exp_dirs",)),
    "analyze": Command(AnalyzeConfig, arguments=("results_dir",), title="raypipe experiments analyze"),
}
# Config files of no command, read with the same machinery: their keys, types and messages, and docs tables.
FILES = {"experiment": Command(ExperimentConfig, title="config.json (an experiment folder's)")}


def _spec(name: str) -> Command:
    return COMMANDS[name] if name in COMMANDS else FILES[name]


def title(name: str) -> str:
    """What messages and headings call a command ('raypipe experiments analyze') or a file."""
    return _spec(name).title or f"raypipe {name}"


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
def options(command: str) -> tuple[Option, ...]:
    """Every option of a command, in declaration order (top-level fields first, then each section's)."""
    spec = _spec(command)
    found = [o for o in _walk(spec.config) if o.field.name not in spec.exclude or len(o.path) > 1]
    found.sort(key=lambda o: len(o.path) > 1)  # stable: the sections keep their order
    flags = [flag for o in found if o.cli for flag in o.flags]
    duplicated = {flag for flag in flags if flags.count(flag) > 1}
    assert not duplicated, f"{command}: flags declared twice: {duplicated}"
    return tuple(found)


def _sections(command: str) -> set[tuple[str, ...]]:
    return {o.path[:i] for o in options(command) for i in range(1, len(o.path))}


# --- values: coercion, config files, resolution --------------------------------------------------------------------

def _alternatives(hint: Any) -> tuple:
    """The members of a union type (`int | str | None`), or the type alone."""
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


def describe_type(hint: Any) -> str:
    choices = choices_of(hint)
    args = [a for a in _alternatives(hint) if a is not NoneType]
    if choices:
        text = "one of " + ", ".join(str(c) for c in choices)
    else:
        text = " or ".join(f"list of {typing.get_args(a)[0].__name__}" if typing.get_origin(a) in (list, tuple)
                           else a.__name__ for a in args)
    return text + (" (or null)" if NoneType in _alternatives(hint) else "")


def _whole(value: Any) -> bool:
    """A whole number, or its text ('42'): what a list of int takes from a flag or a file."""
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value) is not None)


def coerce(value: Any, hint: Any, key: str) -> Any:
    """A value from a YAML file (or a flag) as the field's type; the field's own checks come after, in the dataclass.

    YAML reads `layers: -1` as a number: a whole number given for a text field becomes its text, and text that is a
    whole number becomes the number where a field takes either (`position: '-1'`)."""
    args = _alternatives(hint)
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


def _unknown(path: tuple[str, ...], name: str, command: str, where: str) -> UserError:
    """One line: the unknown key with its section, and the closest valid key (difflib): in the same section, else
    the same name in another section, else the section's keys."""
    valid = [o.path for o in options(command)] + sorted(_sections(command))
    here = [p[-1] for p in valid if p[:-1] == path]
    close = difflib.get_close_matches(name, here, n=1, cutoff=0.6)
    if close:
        suggestion = f"did you mean {'.'.join((*path, close[0]))!r}?"
    else:
        elsewhere = difflib.get_close_matches(name, [p[-1] for p in valid], n=1, cutoff=0.8)
        suggestion = (f"did you mean {'.'.join(next(p for p in valid if p[-1] == elsewhere[0]))!r}?" if elsewhere else
                      f"{'.'.join(path) or 'the top level'} takes: {', '.join(here)}")
    for_command = f" for `{title(command)}`" if command in COMMANDS else ""
    return UserError(f"{where}: unknown key {'.'.join((*path, name))!r}{for_command}; {suggestion}")


def flatten_file(data: dict, command: str, where: str) -> dict[tuple[str, ...], Any]:
    """A config file's nested mapping as {key path: value}, refusing unknown keys and misplaced sections."""
    hints = {o.path: o.hint for o in options(command)}
    keys, sections = set(hints), _sections(command)
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
                raise _unknown(path, str(name), command, where)

    visit(data, ())
    return flat


def read_config_file(path: str, command: str) -> dict[tuple[str, ...], Any]:
    """The values a config file gives this command (its section, in a workflow file)."""
    import yaml

    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise UserError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config file is a mapping of keys to values, got {type(data).__name__}")
    if set(data) & set(COMMANDS):  # a workflow file: one section per command
        other = sorted(set(data) - set(COMMANDS))
        if other:
            raise UserError(f"{path}: unknown key {other[0]!r} beside the command sections ({', '.join(COMMANDS)}); "
                            "a workflow file holds only those")
        if command not in data:
            raise UserError(f"{path} has no `{command}:` section (it has: {', '.join(data)})")
        section = data[command] or {}
        if not isinstance(section, dict):
            raise UserError(f"{path}: `{command}:` is a section (keys below it), got {section!r}")
        build = data.get("build") or {}
        reads_a_build = ("data_dir",) in {o.path for o in options(command)}
        if reads_a_build and "data_dir" not in section and isinstance(build, dict) and "out_dir" in build:
            section = {"data_dir": build["out_dir"], **section}
        data = section
    return flatten_file(data, command, path)


def resolve(command: str, given: dict[tuple[str, ...], Any] | None = None, config_file: str | None = None) -> Any:
    """The command's config: defaults (a build's model: its preset's), then the file's values, then `given` (the
    flags a user gave; None and [] mean not given)."""
    values = read_config_file(config_file, command) if config_file else {}
    values.update({path: value for path, value in (given or {}).items() if value is not None and value != []})
    return construct(COMMANDS[command].config, values, command)


def construct(config_class: type, values: dict[tuple[str, ...], Any], command: str,
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
            kwargs[config_field.name] = construct(hint, values, command, path,
                                                  getattr(base, config_field.name) if base is not None else None)
        elif path in values:
            kwargs[config_field.name] = coerce(values[path], hint, ".".join(path))
        elif base is not None:
            kwargs[config_field.name] = getattr(base, config_field.name)
        elif config_field.default is MISSING and config_field.default_factory is MISSING:
            argument = not prefix and config_field.name in _spec(command).arguments
            name = config_field.name.upper() if argument else flag_of(config_field)
            raise UserError(f"missing {name} (or `{'.'.join(path)}:` in a --config file)")
    return config_class(**kwargs)


def from_mapping(name: str, data: Any, where: str) -> Any:
    """A config from a file's parsed mapping (FILES: an experiment's config.json), as a config file is read: unknown
    keys and wrong types refused, then the dataclass's own checks; every message starts with `where`."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: must be a mapping of keys to values (a JSON object), got {type(data).__name__}")
    values = flatten_file(data, name, where)
    try:
        return construct(_spec(name).config, values, name)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None


def field_defaults(command: str) -> dict[str, Any]:
    """Dotted field name (as `to_dict()` names it: `model.vllm.tp`) -> the field's declared default. A config
    recorded before a field existed lacks its key; compared as this default, a build made then still resumes."""
    return {".".join(o.names): o.field.default_factory() if o.field.default_factory is not MISSING
            else o.field.default for o in options(command) if not o.required and
            (o.field.default is not MISSING or o.field.default_factory is not MISSING)}


def from_dict(command: str, data: dict, where: str = "config") -> Any:
    """A config back from its `to_dict()`/`dataclasses.asdict` form (as a manifest records it)."""
    return construct(COMMANDS[command].config, flatten_file(file_view(command, data), command, where), command)


# --- the YAML form -------------------------------------------------------------------------------------------------

def file_view(command: str, data: Any) -> dict:
    """A config (dataclass or its asdict form) as config-file keys: nested sections, field names renamed to their
    keys (`model.name` is `model.preset`), top-level values before the sections."""
    if dataclasses.is_dataclass(data):
        data = dataclasses.asdict(data)
    view: dict = {}
    for option in options(command):
        source, target = data, view
        for name, key in zip(option.names[:-1], option.path[:-1]):
            source, target = source.get(name, {}), target.setdefault(key, {})
        if option.names[-1] in source:
            target[option.path[-1]] = source[option.names[-1]]
    return view


def _scalar(value: Any) -> str:
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=10**9, allow_unicode=True)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def to_yaml(command: str, config: Any, header: str = "") -> str:
    """A config as a YAML config file, one key per line with its help as a comment; reading it back (`--config`)
    gives the same config."""
    by_path = {o.path: o for o in options(command)}
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]

    def emit(mapping: dict, path: tuple[str, ...], indent: str) -> None:
        for key, value in mapping.items():
            here = (*path, key)
            if isinstance(value, dict):
                lines.append(f"{indent}{key}:")
                emit(value, here, indent + "  ")
            else:
                help_text = by_path[here].help if here in by_path else ""
                lines.append(f"{indent}{key}: {_scalar(value)}" + (f"  # {help_text}" if help_text else ""))

    emit(file_view(command, config), (), "")
    return "\n".join(lines) + "\n"


# --- the docs' option tables ----------------------------------------------------------------------------------------

def default_text(option: Option) -> str:
    if option.required:
        return "required"
    text = _scalar(option.default)
    return f"{text} (preset {DEFAULT_PRESET})" if option.from_preset else text


def options_table(command: str) -> str:
    """The options of a command as a Markdown table: key, flag(s), type, default, help (a file's: no flags)."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    if command in FILES:
        rows = ["| key | type | default | help |", "|---|---|---|---|"]
        rows += [f"| `{o.key}` | {cell(describe_type(o.hint))} | `{cell(default_text(o))}` | {cell(o.help)} |"
                 for o in options(command)]
        return "\n".join(rows) + "\n"
    rows = ["| key | flag(s) | type | default | help |", "|---|---|---|---|---|"]
    for option in options(command):
        if option.path[0] in COMMANDS[command].arguments:
            flags = f"`{option.key.upper()}` (argument)"
        else:
            flags = ", ".join(f"`{f}`" for f in _shown_flags(option)) if option.cli else "(file only)"
        rows.append(f"| `{option.key}` | {flags} | {cell(describe_type(option.hint))} | "
                    f"`{cell(default_text(option))}` | {cell(option.help)} |")
    for flag, help_text in COMMON_FLAGS:
        rows.append(f"| | `{flag}` | | | {cell(help_text)} |")
    return "\n".join(rows) + "\n"


def _is_switch(hint: Any) -> bool:
    """bool, or bool | None (None: not decided, as --gpu/--no-gpu left out): an --x/--no-x flag."""
    return {a for a in _alternatives(hint) if a is not NoneType} == {bool}


def _shown_flags(option: Option) -> list[str]:
    if _is_switch(option.hint):
        return [f"{flag}/--no-{flag[2:]}" for flag in option.flags]
    return list(option.flags)


COMMON_FLAGS = (
    ("--config FILE", "YAML config file (this command's keys, or a workflow file with a section per command); "
                      "flags given on the command line override it."),
    ("--print-config", "Print the resolved config as YAML and exit without running."),
)


# --- typer ---------------------------------------------------------------------------------------------------------

def _cli_annotation(hint: Any) -> Any:
    if _is_switch(hint):
        return Optional[bool]
    if typing.get_origin(hint) is list:
        return Optional[list[str]]
    args = [a for a in typing.get_args(hint) if a is not NoneType]
    if hint in (int, float) or (len(args) == 1 and args[0] in (int, float)):
        return Optional[hint if hint in (int, float) else args[0]]
    return Optional[str]  # str, Literal (the dataclass checks the choice), int | str (coerced)


def _cli_help(option: Option) -> str:
    """The help, and what --help cannot show as a default: the preset's value, or that the option is required."""
    if option.from_preset:
        return f"{option.help} Default: the preset's ({DEFAULT_PRESET}: {_scalar(option.default)})."
    return f"{option.help} Required, here or in the --config file." if option.required else option.help


def _panel(option: Option) -> str | None:
    """Help panels per section: 'model.vllm: The vLLM engine's own knobs (--backend vllm)'."""
    if len(option.path) == 1:
        return None
    doc = (option.section.__doc__ or "").strip().split("\n")[0]
    first = re.split(r"(?<=[a-z)])[.:] ", doc + " ")[0].rstrip(".: ")
    return f"{'.'.join(option.path[:-1])}: {first}"


def with_options(command: str, prepare: Callable[[dict], dict] | None = None) -> Callable[[Callable], Callable]:
    """Decorator: `run(config, ...)` as a typer command function whose parameters are the command's derived options
    and arguments, `--config` and `--print-config`, and `run`'s own parameters after its first; `run` gets the
    resolved config. `prepare` rewrites the values given on the command line ({key path: value}) before they
    resolve: for what the command line alone does (click gives `--seeds 42 123` one value, the rest as arguments)."""
    return functools.partial(typer_command, command, prepare=prepare)


def typer_command(command: str, run: Callable, prepare: Callable[[dict], dict] | None = None) -> Callable:
    """See `with_options`."""
    import typer

    parameters = [inspect.Parameter("context", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
    for option in options(command):
        if option.path[0] in COMMANDS[command].arguments:
            parameters.append(inspect.Parameter(
                option.param, inspect.Parameter.KEYWORD_ONLY, annotation=_cli_annotation(option.hint),
                default=typer.Argument(None, help=_cli_help(option), metavar=option.key.upper(),
                                       show_default=False)))
            continue
        if not option.cli:
            continue
        choices = choices_of(option.hint)
        parameters.append(inspect.Parameter(
            option.param, inspect.Parameter.KEYWORD_ONLY, annotation=_cli_annotation(option.hint),
            default=typer.Option(None if option.required else option.default, *_shown_flags(option),
                                 help=_cli_help(option), show_default=not option.from_preset,
                                 rich_help_panel=_panel(option),
                                 metavar=f"[{'|'.join(choices)}]" if choices else None)))
    parameters += [
        inspect.Parameter("config_file", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str],
                          default=typer.Option(None, "--config", metavar="FILE", help=COMMON_FLAGS[0][1],
                                               rich_help_panel="Config file")),
        inspect.Parameter("print_config", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                          default=typer.Option(False, "--print-config", help=COMMON_FLAGS[1][1],
                                               rich_help_panel="Config file")),
    ]
    own = list(inspect.signature(run).parameters.values())[1:]
    own_hints = typing.get_type_hints(run)
    parameters += [p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=own_hints.get(p.name, p.annotation))
                   for p in own]

    def wrapper(context: typer.Context, **kwargs: Any) -> Any:
        config_file, print_config = kwargs.pop("config_file"), kwargs.pop("print_config")
        extra = {p.name: kwargs.pop(p.name) for p in own}
        # A flag overrides the file only when given: its typer default (shown in --help) is the field's default.
        given = {option.path: kwargs[option.param] for option in options(command) if option.param in kwargs
                 and context.get_parameter_source(option.param).name not in ("DEFAULT", "DEFAULT_MAP")}
        config = resolve(command, prepare(given) if prepare else given, config_file)
        if print_config:
            typer.echo(to_yaml(command, config, f"{title(command)} config (resolved); run it with: "
                                                f"{title(command)} --config FILE"), nl=False)
            return None
        return run(config, **extra)

    wrapper.__signature__ = inspect.Signature(parameters)
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    wrapper.__name__, wrapper.__doc__, wrapper.__module__ = run.__name__, run.__doc__, run.__module__
    return wrapper


def main(argv: list[str] | None = None) -> None:
    """`python -m raypipe.options [NAME ...]`: the option tables of the commands (and FILES), as Markdown."""
    for command in (argv if argv is not None else sys.argv[1:]) or [*COMMANDS, *FILES]:
        if command not in COMMANDS and command not in FILES:
            raise SystemExit(f"unknown command {command!r}; known: {', '.join([*COMMANDS, *FILES])}")
        print(f"### {title(command)}\n\n{options_table(command)}")


if __name__ == "__main__":
    main()
