"""Store once the tensors several model dirs hold bit for bit.

Merges and fine-tunes of one base share most of their bytes: a LoRA fine-tune never touches the embedding,
and a merge of such models copies it from the base (Gemma 3 270M: 168 M of its 268 M parameters, 671 MB of
every 1.07 GB float32 dir). :func:`share` moves the named tensors of a model dir into a store folder, one
file per distinct tensor (named by its name and a hash of its bytes), and hard-links that file back into the
dir; the dir becomes a standard sharded checkpoint (``model-00001-of-0000N.safetensors``, its own tensors,
the linked shards after it, and ``model.safetensors.index.json``) that transformers, vLLM and tsugiki load
as before. A file system without
hard links gets a copy (the dir is right, nothing is saved).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterable

from tsugiki.fileio import atomic_write

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"


def _key(name: str, tensor) -> str:
    """A hash of the tensor's name, dtype, shape and bytes (read in place, no copy)."""
    import torch

    h = hashlib.sha256(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    h.update(memoryview(tensor.contiguous().view(-1).view(torch.uint8).numpy()))
    return h.hexdigest()[:16]


def share(model_dir: str | os.PathLike, store: str | os.PathLike, names: Iterable[str]) -> int:
    """Move the tensors ``names`` of ``model_dir`` (a dir with one ``model.safetensors``) into ``store`` and link
    them back; returns the bytes the dir no longer holds on its own. A dir already sharded, or holding none of
    the names, is left as it is (0)."""
    import torch
    from safetensors.torch import load_file, save_file

    d, store = Path(model_dir), Path(store)
    if (d / INDEX).exists() or not (d / WEIGHTS).is_file():
        return 0
    tensors = load_file(str(d / WEIGHTS))
    moved = {n: tensors[n] for n in names if n in tensors}
    if not moved:
        return 0
    store.mkdir(parents=True, exist_ok=True)
    count = len(moved) + 1
    own = f"model-00001-of-{count:05d}.safetensors"
    weight_map = {n: own for n in tensors if n not in moved}
    saved = 0
    for i, (name, tensor) in enumerate(moved.items(), start=2):
        kept = store / f"{_key(name, tensor)}.safetensors"
        shard = f"model-{i:05d}-of-{count:05d}.safetensors"
        if kept.exists():  # the same name and bytes as a tensor stored before (the key says so; check it)
            if not torch.equal(load_file(str(kept))[name], tensor):
                raise RuntimeError(f"{kept}: holds another {name!r} under the same key")
        else:
            tmp = kept.with_name(kept.name + ".tmp")
            save_file({name: tensor.contiguous()}, str(tmp), metadata={"format": "pt"})
            tmp.replace(kept)
        _link(kept, d / shard)
        weight_map[name] = shard
        saved += tensor.numel() * tensor.element_size()
    tmp = d / (own + ".tmp")
    save_file({n: t.contiguous() for n, t in tensors.items() if n not in moved}, str(tmp), metadata={"format": "pt"})
    tmp.replace(d / own)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    # model.safetensors goes last: loaders take it over the index, so until then the dir loads as it was
    atomic_write(d / INDEX, json.dumps({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
                                       indent=2) + "\n")
    (d / WEIGHTS).unlink()
    return saved


def has_weights(model_dir: str | os.PathLike) -> bool:
    """Whether ``model_dir`` holds safetensors weights, in one file or sharded (after :func:`share`)."""
    return (Path(model_dir) / WEIGHTS).is_file() or (Path(model_dir) / INDEX).is_file()


def _link(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # another file system, or one without hard links
        shutil.copyfile(src, tmp)
    tmp.replace(dst)


def disk_bytes(path: str | os.PathLike) -> int:
    """Bytes the files under ``path`` take, each hard-linked file counted once (what ``du`` reports)."""
    seen, total = set(), 0
    for root, _, files in os.walk(path):
        for f in files:
            st = os.lstat(os.path.join(root, f))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total
