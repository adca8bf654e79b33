"""Secrets and row data kept out of what tidegate prints and stores as error text.

Two rules, applied where text leaves the process (log lines, ``last_error``, ``etl_errors.message``,
``status``/``--json``, the web API), including text that a handler's own exception or output echoes:

* **no secrets**: a URL's password (``scheme://user:secret@host``), ``password=...`` style pairs
  (libpq keywords, query strings, ``PGPASSWORD=``, ``token=``), and any value registered with
  :func:`register_secret` (the pool's database password, the admin token) become ``***``;
* **no row contents in error text**: a database error becomes its class, SQLSTATE and primary
  message, never its DETAIL (``Failing row contains (...)``, ``Key (id)=(42)``); for data
  exceptions (SQLSTATE class 22, e.g. a cast error) the quoted value in the message is dropped too.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, TextIO

from sqlalchemy.exc import DBAPIError

MASK = "***"
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*:)[^\s@/]*@")
# key=value / key: value pairs whose value is a secret (libpq keywords, env vars, query strings, JSON)
_PAIR = re.compile(
    r"""(?ix)
    ( \b(?:pg)?(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key)\b ["']? \s* [=:] \s* )
    ( '(?:[^'\\]|\\.)*' | "(?:[^"\\]|\\.)*" | [^\s&;,'"}]+ )
    """
)
_QUOTED = re.compile(r'"(?:[^"]|"")*"')
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """A literal secret (at least 4 characters) this process knows: masked wherever it appears."""
    if value and len(value) >= 4:
        _secrets.add(value)


def register_url(url: str | None) -> None:
    """The password of a database URL this process connects with."""
    if url:
        m = re.search(r"://[^\s:/@]*:([^\s@/]*)@", url)
        register_secret(m.group(1) if m else None)
        m = re.search(r"\bpassword=([^&\s]+)", url)
        register_secret(m.group(1) if m else None)


def redact(text: str) -> str:
    """``text`` with URL passwords, secret-looking pairs and registered secrets masked."""
    if not text:
        return text
    text = _URL_PASSWORD.sub(rf"\1{MASK}@", text)
    text = _PAIR.sub(rf"\1{MASK}", text)
    for secret in _secrets:
        text = text.replace(secret, MASK)
    return text


def redact_value(value: Any) -> Any:
    """``redact`` applied to every string inside a JSON-like value."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(v) for v in value]
    return value


def error_text(err: BaseException, limit: int = 2000, *, with_class: bool = True) -> str:
    """One line for ``last_error`` or ``etl_errors.message``: the error's class (unless
    ``with_class`` is false: ``etl_errors`` has its own column) and message, with no secret and, for
    database errors, no row data (SQLSTATE and primary message only)."""
    orig = err.orig if isinstance(err, DBAPIError) and err.orig is not None else err
    diag = getattr(orig, "diag", None)
    primary = getattr(diag, "message_primary", None)
    if primary:
        state = getattr(orig, "sqlstate", None) or "?"
        if state.startswith("22"):  # data exception: the message quotes the offending value
            primary = _QUOTED.sub('"…"', primary)
        line = f"{type(orig).__name__} [{state}]: {primary}" if with_class else f"[{state}] {primary}"
    else:
        text = str(err).strip()
        first = text.splitlines()[0] if text else ""
        line = (f"{type(err).__name__}: {first}".rstrip(": ") if with_class else first) or type(err).__name__
    line = redact(line)
    return line if len(line) <= limit else line[: limit - 1] + "…"


class RedactFilter(logging.Filter):
    """On a handler: every record it emits, message, arguments, traceback and fields, redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        fields = getattr(record, "tidegate", None)
        if isinstance(fields, dict):
            record.tidegate = redact_value(fields)
        return True


class RedactingStream:
    """A text stream that masks what is written to it (``sys.stdout``/``sys.stderr`` of a worker, where a
    handler's own ``print`` or argument parser may echo a URL). Each write is masked on its own."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def guard_std_streams() -> None:
    """Mask secrets in everything this process writes to stdout and stderr through Python."""
    if not isinstance(sys.stdout, RedactingStream):
        sys.stdout = RedactingStream(sys.stdout)  # type: ignore[assignment]
    if not isinstance(sys.stderr, RedactingStream):
        sys.stderr = RedactingStream(sys.stderr)  # type: ignore[assignment]
