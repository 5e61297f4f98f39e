"""``space.kind: ps``: parameter-space search (Akiba et al. 2024): ``space`` (the search space and its
recipes), ``kind`` (the config section, plan and Problem), ``plots`` (the parameter heatmap)."""
