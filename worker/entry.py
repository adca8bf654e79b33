"""The `tidegate` console script: the CLI (worker/cli.py) with Python's cyclic garbage collector paused while
it starts.

Importing the CLI and what a command needs (SQLAlchemy, psycopg, the job kinds) creates some 300,000 objects
that live as long as the process; the collector walks them over and over as they accumulate (126 young, 11
middle and one full collection on the way), about a sixth of the CPU time of a start (bench/RESULTS.md, pool
start). So the collector is off until the command runs: :func:`started` turns it back on, with what was
imported moved out of its sight (``gc.freeze``): it is never garbage, and a pool's forked workers then do
not write to the pages they share with their supervisor when they collect. `tidegate worker` calls it just
before it forks; every other command when its group's options are parsed (worker/cli.py)."""

from __future__ import annotations

import gc

_paused = False


def main() -> None:
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True
    from tidegate.worker.cli import main as cli_main

    cli_main()


def started() -> None:
    """The start is over: the collector runs again (if :func:`main` paused it), over objects made from now on."""
    global _paused
    if _paused:
        _paused = False
        gc.freeze()
        gc.enable()
