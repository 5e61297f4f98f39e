"""`tsugiki.merge`: a recipe → a merged model dir, whatever the family of its sources.

The recipe's sources decide the family (configs and headers only are read): a LLaVA-family source
means the language model inside it is merged and the vision side copied (:mod:`tsugiki.vlm.merge`);
a local SDXL pipeline, UNet folder or single file means UNets are merged and the rest of the
pipeline copied (:mod:`tsugiki.diffusion.merge`); anything else is a causal-LM merge
(:mod:`tsugiki.merging.to_disk`). Callers that know the family may call that family's function;
this is the entry for those that do not (``tsugiki merge``, a PS search's export).

This module sits above merging/vlm/diffusion (it names all three) and below evolution and commands.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Literal, Mapping

from tsugiki.diffusion.merge import is_sdxl_recipe, merge_sdxl_to_disk
from tsugiki.merging.execute import MergeOptions
from tsugiki.merging.output import MergeResult
from tsugiki.merging.provenance import Named
from tsugiki.merging.recipe import Recipe, load_recipe
from tsugiki.merging.to_disk import merge_to_disk
from tsugiki.vlm.merge import is_vlm_recipe, merge_vlm_to_disk

Family = Literal["lm", "vlm", "sdxl"]


def family_of(recipe: Recipe, base_dir: Path | None = None) -> Family:
    """Which family merges ``recipe``: a LLaVA source wins over an SDXL one (checked in that order)."""
    if is_vlm_recipe(recipe, base_dir):
        return "vlm"
    if is_sdxl_recipe(recipe, base_dir):
        return "sdxl"
    return "lm"


def merge(recipe: Recipe | str | PathLike, out: str | Path, options: MergeOptions = MergeOptions(), *,
          base_dir: Path | None = None, named: Mapping[str, Named] | None = None, vocab: str = "error",
          components_from: str | None = None, single_file: bool = False) -> MergeResult:
    """Merge ``recipe`` (a :class:`Recipe`, or the path of a recipe YAML: its relative model paths then
    resolve against its folder unless ``base_dir`` is given) into the dir ``out``, atomically.

    Options for one family are ignored by the others: ``vocab`` (``error`` or ``embed_slice``) is the
    LLaVA merge's, ``components_from`` and ``single_file`` the SDXL merge's; ``named`` as for
    :func:`tsugiki.merging.to_disk.merge_to_disk`.
    """
    if not isinstance(recipe, Recipe):
        path = Path(recipe)
        recipe = load_recipe(path)
        base_dir = path.resolve().parent if base_dir is None else base_dir
    family = family_of(recipe, base_dir)
    if family == "vlm":
        return merge_vlm_to_disk(recipe, out, options, base_dir=base_dir, vocab=vocab, named=named)
    if family == "sdxl":
        return merge_sdxl_to_disk(recipe, out, options, base_dir=base_dir, components_from=components_from,
                                  single_file=single_file, named=named)
    return merge_to_disk(recipe, out, options, base_dir=base_dir, named=named)


__all__ = ["Family", "family_of", "merge"]
