"""The one way a merged model dir is written, for LLMs, LLaVA grafts and SDXL pipelines alike.

``write_merged_dir`` takes the planned output tensors and a stream of them, and does the rest in this
order: an atomic temp dir beside OUT (:mod:`tsugiki.merging.output_dir`), the sharded safetensors
(:mod:`tsugiki.merging.writer`, in ``weights_dir`` with ``prefix``), a check that no source file changed
while it was read, the family's side files (a hook: config and tokenizer, a LLaVA's processor, an SDXL
pipeline's other components; an ``auto_map`` in their configs is removed, since the output ships no code, and
the card says so), ``tsugiki_recipe.yaml`` and the model card (a hook, given the
:class:`~tsugiki.merging.provenance.Description` of the sources). The sources' SHA-256 are computed in
the background meanwhile (:class:`~tsugiki.merging.provenance.SourceDigests`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch

from tsugiki.hf_load import drop_auto_map
from tsugiki.merging.execute import MergeOptions
from tsugiki.merging.output_dir import AtomicOutputDir
from tsugiki.merging.output_files import dropped_code_note
from tsugiki.merging.provenance import Description, Named, SourceDigests, describe
from tsugiki.merging.recipe import Recipe
from tsugiki.merging.writer import DEFAULT_MAX_SHARD_BYTES, OutputTensor, ShardedSafetensorsWriter


@dataclass(frozen=True)
class MergeResult:
    out: Path
    tensors: int
    bytes_written: int
    seconds: float
    files: list[str]


@dataclass(frozen=True)
class WeightsLayout:
    """Where the tensors go inside the dir: ``weights_dir`` ("" or "unet"), file ``prefix``, header metadata."""

    entries: Sequence[OutputTensor]
    metadata: Mapping[str, str]
    weights_dir: str = ""
    prefix: str = "model"


def write_merged_dir(out: str | Path, options: MergeOptions, recipe: Recipe, sources: Mapping[str, object],
                     layout: WeightsLayout, tensors: Iterable[tuple[str, torch.Tensor, bool]], *,
                     side_files: Callable[[Path], list[str]], card: Callable[[Description], str],
                     first_files: Callable[[Path], list[str]] | None = None, base_dir: Path | None = None,
                     named: Mapping[str, Named] | None = None, extra_refs: Sequence[str] = (),
                     start: float | None = None) -> MergeResult:
    """Write the merged dir ``out`` (see the module doc). ``sources``: what the tensors are read from
    (each with ``weight_files()`` and ``check_unchanged()``); ``tensors``: (name, tensor, wait) in ``layout.entries`` order,
    ``wait`` as for :meth:`ShardedSafetensorsWriter.write` (a lazy stream: the sources are hashed while it
    computes); ``extra_refs``: refs outside the recipe the card names (they get a written form too);
    ``side_files(tmp)`` writes the family's
    other files into the temp dir and returns their names (``first_files(tmp)`` the same, before the
    tensors: files whose copy may fail, so that it fails before the merge computes); ``card(description)``
    is the README."""
    start = time.perf_counter() if start is None else start
    digests = SourceDigests({r: s.weight_files() for r, s in sources.items()})
    try:
        with AtomicOutputDir(out, force=options.force, sources=[s.path for s in sources.values()]) as tmp:
            files = first_files(tmp) if first_files is not None else []
            weights = tmp / layout.weights_dir if layout.weights_dir else tmp
            weights.mkdir(exist_ok=True)
            writer = ShardedSafetensorsWriter(weights, layout.entries, prefix=layout.prefix, metadata=dict(layout.metadata),
                                              max_shard_bytes=options.max_shard_bytes or DEFAULT_MAX_SHARD_BYTES)
            try:
                for name, tensor, wait in tensors:
                    writer.write(name, tensor, wait=wait)
                files += [f"{layout.weights_dir}/{f}" if layout.weights_dir else f for f in writer.close()]
                for src in sources.values():  # what was read is one version of each file
                    src.check_unchanged()
            except BaseException:
                writer.abort()
                raise
            files += side_files(tmp)
            dropped = drop_auto_map(tmp)  # sources' auto_map names code the output does not ship
            described = describe(recipe, digests, Path(out), base_dir=base_dir, named=named, extra_refs=extra_refs)
            files += described.write(tmp)
            (tmp / "README.md").write_text(card(described) + dropped_code_note(dropped))
            files.append("README.md")
    except BaseException:
        digests.cancel()
        raise
    entries = layout.entries
    return MergeResult(Path(out), len(entries), sum(e.nbytes for e in entries), time.perf_counter() - start, files)
