"""tidegate's job kinds: backfill-range, archive-range, their handlers and layouts.

Nothing here claims work, commits, sleeps or handles signals: that is the
runtime's (worker/) business. Kinds reach the runtime through the
``tidegate.plugins`` entry point (:mod:`jobs.plugin`).
"""
