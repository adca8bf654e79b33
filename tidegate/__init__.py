"""tidegate: resumable, throttled, pausable backfill and archive jobs on PostgreSQL.

This module is the public API: what a handler or job-kind author imports. Everything listed in
``__all__`` is stable; the rest of the package (``tidegate.worker``: the runtime, ``tidegate.jobs``:
the shipped job kinds) is internal and may change. docs/handlers.md shows each name in use.

Names are imported on first use, so ``import tidegate`` costs nothing until one is touched.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module that defines it
_EXPORTS = {
    # handlers (backfill-range): a class with transform/write, or a function of (conn, row)
    "ItemHandler": "tidegate.jobs.handlers",
    "register": "tidegate.jobs.handlers",
    "RowFunction": "tidegate.jobs.handlers",
    "BadItem": "tidegate.jobs.handlers",
    # errors a handler or kind raises
    "InvalidInput": "tidegate.worker.errors",
    # job kinds: the base classes, what a kind receives and returns
    "JobKind": "tidegate.worker.kinds",
    "RangeKind": "tidegate.worker.kinds",
    "OneShotKind": "tidegate.worker.kinds",
    "Payload": "tidegate.worker.kinds",
    "Plan": "tidegate.worker.kinds",
    "SlicePlan": "tidegate.worker.kinds",
    "BatchContext": "tidegate.worker.kinds",
    "NextKeys": "tidegate.worker.kinds",
    "KeyRange": "tidegate.worker.kinds",
    "BatchResult": "tidegate.worker.kinds",
    "ItemError": "tidegate.worker.kinds",
    "dense_keys": "tidegate.worker.kinds",
    "register_kind": "tidegate.worker.kinds",
}
_RENAMED = {"register_kind": "register"}

__all__ = [  # the same names as _EXPORTS (tests/test_api.py checks), written out for readers and linters
    "BadItem", "BatchContext", "BatchResult", "InvalidInput", "ItemError", "ItemHandler", "JobKind", "KeyRange",
    "NextKeys", "OneShotKind", "Payload", "Plan", "RangeKind", "RowFunction", "SlicePlan", "__version__",
    "dense_keys", "register", "register_kind",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tidegate' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from tidegate.jobs.handlers import BadItem, ItemHandler, RowFunction, register
    from tidegate.worker.errors import InvalidInput
    from tidegate.worker.kinds import (
        BatchContext,
        BatchResult,
        ItemError,
        JobKind,
        KeyRange,
        NextKeys,
        OneShotKind,
        Payload,
        Plan,
        RangeKind,
        SlicePlan,
        dense_keys,
    )
    from tidegate.worker.kinds import register as register_kind
