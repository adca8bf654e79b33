"""Handlers that leak what they are given, as careless user code does (imported by worker subprocesses)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Connection

from tidegate.jobs.handlers import ItemHandler


def echo_url(conn: Connection, row: Mapping[str, Any]) -> None:
    """Every item fails, its message echoing the connection string and a password pair."""
    raise RuntimeError(f"cannot sync {row['k']} via {os.environ['DATABASE_URL']} (password=pw-{row['k']})")


class _ParserThenWriteFails(ItemHandler):
    """A handler that parses an argv holding the URL (argparse prints it to stderr and exits), then
    fails its whole batch with the URL in the message: the slice's last_error."""

    def transform(self, row: Mapping[str, Any]) -> Iterable[Any]:
        parser = argparse.ArgumentParser(prog="sync-tool")
        try:
            parser.parse_args(["--target", os.environ["DATABASE_URL"]])
        except SystemExit:
            pass
        return [row["k"]]

    def write(self, conn: Connection, records: list[Any]) -> None:
        raise ConnectionError(f"target {os.environ['DATABASE_URL']} refused {len(records)} records")


parser_then_write_fails = _ParserThenWriteFails()
