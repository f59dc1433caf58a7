"""The one exception type for mistakes a user can make (bad path, missing column, unknown preset, ...).

Entry points catch it and print its message as one line with a non-zero exit, instead of a traceback.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one clear line."""


def user_errors(command):
    """Decorate a command (typer): its `UserError` ends as one `raypipe: error: ...` line on stderr and exit code 2.
    The one place the command-line modules turn a user's mistake into that line."""
    import functools

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        import typer

        try:
            return command(*args, **kwargs)
        except UserError as exc:
            typer.echo(f"raypipe: error: {exc}", err=True)
            raise typer.Exit(2)

    return wrapper


def read_user_json(path: str, what: str = "an experiment folder holds config.json and data_config.json"):
    """A JSON file the user wrote; a missing file or bad JSON is one UserError naming the file (`what` explains
    what belongs there)."""
    import json
    import os

    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file ({what})")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON: {exc}") from None
