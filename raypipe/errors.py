"""The one exception type for mistakes a user can make (bad path, missing column, unknown preset, ...).

Entry points catch it and print its message as one line with a non-zero exit, instead of a traceback.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one clear line."""
