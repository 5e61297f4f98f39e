"""A recipe's sources opened: each model reference -> the checkpoint its tensors are read from.

A plain reference gives a :class:`~tsugiki.merging.checkpoint.Checkpoint`; ``MODEL+ADAPTER`` gives
MODEL's checkpoint with the LoRA adapter merged into each tensor as it is read
(:class:`~tsugiki.merging.lora.LoraCheckpoint`; peft is imported only when an adapter is read).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from tsugiki.merging.checkpoint import Checkpoint, resolve_model_ref
from tsugiki.merging.lora import LoraCheckpoint
from tsugiki.merging.refs import split_lora_ref


def open_checkpoint(ref: str, *, base_dir: Path | None = None, allow_pickle: bool = False, label: str | None = None,
                    where: str = "") -> Checkpoint:
    """The checkpoint a model reference names; ``MODEL+ADAPTER`` gives MODEL with the LoRA adapter merged
    into each tensor as it is read (:class:`tsugiki.merging.lora.LoraCheckpoint`). ``where`` prefixes an
    adapter's errors (the recipe's ``FILE:LINE: key: ``)."""
    model, adapter = split_lora_ref(ref)
    if adapter is None:
        return Checkpoint(resolve_model_ref(ref, base_dir=base_dir), allow_pickle=allow_pickle, label=label or ref)
    return LoraCheckpoint(resolve_model_ref(model, base_dir=base_dir), adapter, allow_pickle=allow_pickle,
                          label=label or ref, base_dir=base_dir, where=where)


def open_sources(refs: Iterable[str], *, base_dir: Path | None = None, allow_pickle: bool = False,
                 where: Callable[[str], str] | None = None) -> dict[str, Checkpoint]:
    """Each ref's checkpoint (:func:`open_checkpoint`); ``where(ref)`` locates a ref in the recipe for errors.
    On an error the checkpoints already opened are closed."""
    out: dict[str, Checkpoint] = {}
    try:
        for r in refs:
            out[r] = open_checkpoint(r, base_dir=base_dir, allow_pickle=allow_pickle, where=where(r) if where else "")
    except BaseException:
        for c in out.values():
            c.close()
        raise
    return out
