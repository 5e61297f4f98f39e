"""Evolutionary search over merge recipes (PS, DFS, PS+DFS) with CMA-ES."""
