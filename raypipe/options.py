"""Command-line options, config-file keys and the docs' option tables, all derived from the config dataclasses.

A command's options are the fields of its config dataclass (`COMMANDS`), walked into nested sections: a build's are
BuildConfig's own fields at the top level and `model:` (with `vllm:` and `hf:`), `source:`, `features:`, `labels:`.
Each field gives, from its one declaration (`raypipe.config.knob`): the config-file key (dotted in messages:
`model.vllm.tp`), the flag(s) (`--tp`), the type, the default and the help. Values resolve in three layers: the
defaults (for a build's `model:` section, its preset's values), then a `--config` YAML file, then the flags given on
the command line.

A config file holds one command's keys, or is a workflow file with a section per command (`build:`, `train:`,
`sweep:`, `evaluate:`, ..., `finetune:`); there a probe section without `data_dir` reads the build section's `out_dir`.
The walk, the coercion and the reading of a file's keys are raypipe.knobs' (which files of no command use too: an
experiment's config.json, listed here in `FILES` for the docs' tables); this module names the commands and adds the
command line, the YAML form and the tables.

    python -m raypipe.options build        # the build's options as a Markdown table (the docs call options_table)

Light on purpose: it imports the config dataclasses; PyYAML and typer only in the functions that use them.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import sys
import typing
from typing import Any, Callable, Optional

from raypipe import knobs
from raypipe.config import DEFAULT_PRESET, BuildConfig, choices_of
from raypipe.errors import UserError
from raypipe.finetune.config import AnalyzeConfig, FinetuneCommandConfig
from raypipe.knobs import Command, NoneType, Option, alternatives, describe_type, fields_of, sections_of
from raypipe.probes.config import EvaluateConfig, ScoreConfig, SweepConfig, TrainConfig
from raypipe.tasks.experiment import CONFIG_FILE

COMMANDS = {
    "build": Command("build", BuildConfig),
    "train": Command("train", TrainConfig),
    # SweepConfig inherits wandb_project from ProbeInputConfig, but the sweep logs nothing to W&B: no option for it.
    "sweep": Command("sweep", SweepConfig, exclude=("wandb_project",)),
    "evaluate": Command("evaluate", EvaluateConfig),
    "score": Command("score", ScoreConfig),
    "finetune": Command("finetune", FinetuneCommandConfig, arguments=("exp_dirs",)),
    "analyze": Command("analyze", AnalyzeConfig, arguments=("results_dir",), title="raypipe experiments analyze"),
}
# Config files of no command, read with the same machinery: their keys, types and messages, and docs tables.
FILES = {"experiment": CONFIG_FILE}


def _spec(name: str) -> Command:
    return COMMANDS[name] if name in COMMANDS else FILES[name]


def title(name: str) -> str:
    """What messages and headings call a command ('raypipe experiments analyze') or a file."""
    return _spec(name).heading


def options(command: str) -> tuple[Option, ...]:
    """Every option of a command (or file), in declaration order (top-level fields first, then each section's)."""
    return fields_of(_spec(command))


def _sections(command: str) -> set[tuple[str, ...]]:
    return sections_of(_spec(command))


def flatten_file(data: dict, command: str, where: str) -> dict[tuple[str, ...], Any]:
    return knobs.flatten_file(data, _spec(command), where)


def construct(config_class: type, values: dict[tuple[str, ...], Any], command: str) -> Any:
    return knobs.construct(config_class, values, _spec(command))


# --- values: config files, resolution -----------------------------------------------------------------------------

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
    return {a for a in alternatives(hint) if a is not NoneType} == {bool}


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
