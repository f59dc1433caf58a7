"""The one exception type for mistakes a user can make (bad path, missing column, unknown preset, ...).

Entry points catch it and print its message as one line with a non-zero exit, instead of a traceback.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one clear line."""


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
