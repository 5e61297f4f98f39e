"""SDXL grafting: UNet merges by block and group; text encoders, tokenizers and VAE copied untouched.

- `layout`: the SDXL UNet's original (single-file) and diffusers key layouts, one table of data.
- `blocks`: merge granularity (BASE, IN00-IN08, M00, OUT00-OUT08 x attention/resnet/norm/embedding),
  match names for recipe filters, search-space units.
- `sources`: SDXL UNets from pipeline folders, UNet folders or single files, as merge-engine sources.
- `merge`: `is_sdxl_recipe`, `plan_unet_merge`, `merge_sdxl_to_disk` (a complete pipeline folder).
- `pipeline_files`: component checks and bit-for-bit copies.
- `presets`: named few-step sampling settings (text-to-image evaluation, `tsugiki eval t2i`, is
  :mod:`tsugiki.benchmarks.t2i`).
"""
