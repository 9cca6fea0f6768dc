"""The data side of the ML core: readers for the supported raw formats and the canonical image store.

Depends on numpy, pandas/pyarrow and Pillow only; no MLOps imports.
"""
