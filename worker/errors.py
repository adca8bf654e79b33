"""tidegate's exceptions. Each class's docstring is its default message."""

from __future__ import annotations


class TidegateError(Exception):
    """tidegate failed."""

    exit_code = 1

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


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
