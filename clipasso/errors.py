"""Errors a user can fix: one line each, mapped to exit code 2 by the CLI and to a 4xx by the service."""


class InputError(ValueError):
    """Bad input (file, image or parameter). The message is shown to the user as it is: one line."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (for a user message or a log), at most `limit` characters."""
    text = " ".join(str(exc).split())[:limit]
    return text or type(exc).__name__
