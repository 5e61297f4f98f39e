"""``space.kind: dfs`` and ``ps_dfs``: data-flow-space search (Akiba et al. 2024): ``space`` (paths, scales and
their folded export), ``kind`` (the config sections, plans and Problem), ``plots`` (the path and scaling matrix)."""
