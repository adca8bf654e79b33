"""tidegate's exceptions. Each class's docstring is its default message.

A message may quote what a user gave (a payload field, a flag, a name): quote it with
:func:`quote`, which keeps a few hundred characters of it, so a 1 MB value never reaches
``last_error``, the logs or a terminal whole. Every message is capped as a last resort.
"""

from __future__ import annotations

from typing import Any

QUOTE_CHARS = 200  # of a user's value quoted in a message
MESSAGE_CHARS = 2_000  # of any one error message (and of a stored last_error)


def quote(value: Any, limit: int = QUOTE_CHARS) -> str:
    """``repr(value)``, cut to about ``limit`` characters with the full length said."""
    if isinstance(value, str | bytes) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value):,} characters)"
    try:
        text = repr(value)
    except ValueError:  # an integer of more than 4,300 digits
        return f"an integer of about {int(value.bit_length() * 0.30103):,} digits"
    except RecursionError:
        return f"a {type(value).__name__} nested too deep to show"
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters)"


def shorten(text: str, limit: int = QUOTE_CHARS) -> str:
    """``text`` as is, cut to ``limit`` characters with the full length said (for lists of names)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def cap(text: str, limit: int = MESSAGE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying so."""
    if not isinstance(text, str) or len(text) <= limit:
        return text
    return f"{text[:limit - 40]}... [{len(text) - limit + 40} more characters]"


class TidegateError(Exception):
    """tidegate failed."""

    exit_code = 1

    def __init__(self, message: str | None = None) -> None:
        super().__init__(cap(message or (self.__doc__ or "").strip()))


class InvalidInput(TidegateError):
    """The input is invalid; nothing was written."""

    exit_code = 2


class InvalidIdentifier(InvalidInput):
    """A table or column name does not name an existing object."""


class NotFound(TidegateError):
    """No such job."""

    exit_code = 3


class IllegalTransition(TidegateError):
    """The job is not in a state that allows this."""

    exit_code = 4


class DatabaseUnavailable(TidegateError):
    """The database cannot be reached."""

    exit_code = 5


class PermissionDenied(TidegateError):
    """The database role lacks a privilege this command needs (ops/roles.sql lists them)."""

    exit_code = 6


class LeaseLost(TidegateError):
    """This worker no longer owns the slice (its lease expired and another worker took it)."""


class SchemaNotReady(TidegateError):
    """The database has no tidegate tables, or older ones than this tidegate needs: run `tidegate db upgrade`."""

    exit_code = 5  # like an unreachable database: nothing can run until an operator acts
