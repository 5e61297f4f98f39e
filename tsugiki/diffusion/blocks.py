"""Merge granularity of the SDXL UNet: the community's 20 blocks and, within a block, groups.

Blocks (SuperMerger's SDXL "MBW" naming, from the original layout):

    BASE              time and add (label) embeddings, the output norm and conv (`out.*`)
    IN00 .. IN08      input_blocks.0 .. input_blocks.8   (IN00 = conv_in; IN03, IN06 = downsamplers)
    M00               middle_block (resnet, 10-layer transformer, resnet)
    OUT00 .. OUT08    output_blocks.0 .. output_blocks.8

SuperMerger gives SDXL's BASE weight to the text encoders and leaves the embeddings unmerged; here
the text encoders are never merged (they are copied from a donor) and BASE is the UNet's own
non-block tensors.

Groups within a block: `attention` (a transformer: proj_in/out, self/cross attention, feed-forward),
`resnet` (convolutions: resnet convs and time projections, shortcuts, down/upsamplers, conv_in/out),
`norm` (every GroupNorm/LayerNorm weight and bias), `embedding` (BASE's time/add embeddings).

Recipes address them through the *match name* of a tensor, which recipe filters (substring match)
and gradients see instead of the bare diffusers name:

    "IN04/attention/down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight"

so `filter: IN04/` selects a block, `filter: /norm/` a group, `filter: OUT01/attention/` both, and a
filter on a diffusers name fragment (`attn2`) still works. A gradient (a list of numbers) is evaluated
at t = position of the block in BLOCKS / 19: a list of exactly 20 values gives each block its own
value (BASE, IN00..IN08, M00, OUT00..OUT08 — the MBW convention).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from tsugiki.diffusion.layout import sdxl_unet_table

BLOCKS: tuple[str, ...] = ("BASE", *(f"IN{i:02d}" for i in range(9)), "M00", *(f"OUT{i:02d}" for i in range(9)))
GROUPS: tuple[str, ...] = ("attention", "resnet", "norm", "embedding")


def block_t(block: str) -> float:
    """Gradient position of a block: 0 for BASE … 1 for OUT08 (index / 19, exact at each block)."""
    return BLOCKS.index(block) / (len(BLOCKS) - 1)


def locate(diffusers_name: str) -> tuple[str, str]:
    """(block, group) of an SDXL UNet tensor given by its diffusers name."""
    row = sdxl_unet_table().by_diffusers(diffusers_name)
    if row is None:
        raise KeyError(f"{diffusers_name!r} is not an SDXL UNet tensor")
    return row.block, row.group


def match_name(diffusers_name: str) -> str:
    """The name recipe filters see: 'BLOCK/group/diffusers.name'."""
    block, group = locate(diffusers_name)
    return f"{block}/{group}/{diffusers_name}"


@dataclass(frozen=True)
class BlockGroup:
    """One merge unit of a search space: a (block, group) pair present in the UNet."""

    block: str
    group: str

    @property
    def name(self) -> str:
        return f"{self.block}/{self.group}"

    @property
    def filter(self) -> str:
        """A recipe filter selecting exactly this unit's tensors."""
        return f"{self.block}/{self.group}/"


def block_groups(diffusers_names: Iterable[str] | None = None) -> list[BlockGroup]:
    """The (block, group) units of an SDXL UNet in BLOCKS x GROUPS order (all units by default):
    the named dimensions of an EvoSDXL-style search space."""
    names = sdxl_unet_table().diffusers_names() if diffusers_names is None else diffusers_names
    present = {locate(n) for n in names}
    return [BlockGroup(b, g) for b in BLOCKS for g in GROUPS if (b, g) in present]


def conditional_setting(values: Mapping[str, float], default: float | None = None) -> list[dict]:
    """A recipe parameter setting (list of {filter, value}) from {"IN04/attention": 0.3, "M00": 0.5, ...}.
    Keys are units ("BLOCK/group") or whole blocks ("BLOCK"); units come first so they win over
    their block. `default` (if given) applies to every other tensor."""
    units, blocks = [], []
    for key, value in values.items():
        block, _, group = key.partition("/")
        if block not in BLOCKS or (group and group not in GROUPS):
            raise ValueError(f"unknown block/group {key!r} (blocks: {', '.join(BLOCKS)}; groups: {', '.join(GROUPS)})")
        (units if group else blocks).append({"filter": f"{block}/{group}/" if group else f"{block}/", "value": value})
    out = units + blocks
    if default is not None:
        out.append({"value": default})
    return out
