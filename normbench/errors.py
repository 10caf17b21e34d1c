"""The one exception type that the CLI turns into a one-line message and exit code 2."""


class UserError(Exception):
    """A problem the user can fix (bad override, unknown name, missing data); the message names the
    fix."""
