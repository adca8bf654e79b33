"""Worked examples of handlers, as a user writes them in their own package (not installed with tidegate)."""
