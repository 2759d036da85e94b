"""Errors a user can fix: one line each, mapped to exit code 2 by the CLI and to a 4xx by the service."""


class InputError(ValueError):
    """Bad input (file, image or parameter). The message is shown to the user as it is: one line."""
