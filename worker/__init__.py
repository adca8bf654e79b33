"""tidegate runtime: queue, leases, batch protocol, worker pool, CLI.

This package knows no job kind; kinds are found through the
``tidegate.plugins`` entry point (see :mod:`worker.kinds`).
"""
