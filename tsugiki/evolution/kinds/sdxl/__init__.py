"""``space.kind: sdxl_blocks``: per-block merges of SDXL UNets: ``space`` (the block search space and its
recipes), ``unet`` (loading a UNet; the ``unet_output_mse`` fitness), ``kind`` (the config section, plan and
Problem); its plot is the PS heatmap (:mod:`tsugiki.evolution.kinds.ps.plots`)."""
