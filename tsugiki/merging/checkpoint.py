"""Lazy, validated reading of model checkpoints, one tensor at a time.

safetensors headers are parsed here rather than through `safe_open` so that every malformed or
truncated file is reported with its path and tensor name before any merge work starts. Two ways to get
a tensor: `read` copies it into memory the caller owns (`preadv`); `view` maps it zero-copy from the
page cache for the streaming merge, and `release` drops those mapped pages again once the tensor is
used, so resident memory stays at the tensors in flight, not at whole shards.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import re
import struct
from pathlib import Path
from typing import Mapping

import torch

from tsugiki.errors import CheckpointError
from tsugiki.merging.refs import split_lora_ref
from tsugiki.merging.tensors import SAFETENSORS_DTYPES, TensorInfo, element_size

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors spec's own limit
PICKLE_WEIGHT_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.bin")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def file_stamp(f: Path) -> tuple[int, int, int]:
    st = os.stat(f)
    return st.st_size, st.st_mtime_ns, st.st_ino


def parse_safetensors_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Validate a safetensors file's header against its size; return tensor infos and metadata."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
                raise CheckpointError(
                    f"{path}: corrupt or truncated safetensors file (header claims {header_len} bytes, file has {size})"
                )
            raw = f.read(header_len)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors header: {e}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header: not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + header_len
    infos: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        try:
            dtype = SAFETENSORS_DTYPES[entry["dtype"]]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: tensor {name!r}: malformed header entry {entry!r}") from None
        nbytes = math.prod(shape) * element_size(dtype)
        if end - begin != nbytes or begin < 0:
            raise CheckpointError(
                f"{path}: tensor {name!r}: data offsets {begin}..{end} do not match shape {list(shape)} {entry['dtype']}"
            )
        if data_start + end > size:
            raise CheckpointError(
                f"{path}: tensor {name!r}: truncated file (data ends at byte {data_start + end}, file has {size})"
            )
        infos[name] = TensorInfo(name, dtype, shape, path, data_start + begin, nbytes)
    return infos, metadata


def read_tensor(info: TensorInfo, fd: int) -> torch.Tensor:
    out = torch.empty(info.shape, dtype=info.dtype)
    if info.nbytes == 0:
        return out
    buf = memoryview(out.reshape(-1).view(torch.uint8).numpy())
    done = 0
    while done < info.nbytes:
        try:
            n = os.preadv(fd, [buf[done:]], info.offset + done)
        except OSError as e:  # EIO and the like: name the source, not the output being written
            raise CheckpointError(f"{info.file}: tensor {info.name!r}: cannot read ({os.strerror(e.errno or 0)})") from None
        if n <= 0:
            raise CheckpointError(f"{info.file}: tensor {info.name!r}: file ended while reading (truncated?)")
        done += n
    return out


class Checkpoint:
    """A Hugging Face model directory or a single weights file, read lazily.

    Directory layouts: `model.safetensors.index.json` (sharded), `model.safetensors`, or a single
    `*.safetensors` file. Pickle checkpoints (`pytorch_model.bin`) are refused unless
    `allow_pickle=True`, and then loaded with `weights_only=True`. A `*.gguf` file is read through
    `tsugiki.merging.gguf`: each tensor dequantized when read, under transformers' names, with
    transformers' config; its `model_dir` is a folder of the config and tokenizer converted from it.
    """

    def __init__(self, path: str | os.PathLike, *, allow_pickle: bool = False, label: str | None = None):
        self.path = Path(path)
        self.label = label or str(path)
        self._fds: dict[Path, int] = {}
        self._maps: dict[Path, mmap.mmap] = {}
        self._pickled: dict[str, torch.Tensor] | None = None
        self._gguf = None  # a tsugiki.merging.gguf.GgufFile
        if not self.path.exists():
            raise CheckpointError(f"{self.path}: no such file or directory")
        # storage order (shard, offset) is the order the model was saved in, and reads sequentially
        found = self._discover(allow_pickle)
        self._infos = dict(sorted(found.items(), key=lambda kv: (str(kv[1].file), kv[1].offset)))
        if not self._infos:
            raise CheckpointError(f"{self.path}: checkpoint holds no tensors")
        self._stamps = {f: file_stamp(f) for f in sorted({i.file for i in self._infos.values()})}

    # -- files -----------------------------------------------------------------------------------
    def weight_files(self) -> list[Path]:
        """The files the tensors are read from, in name order."""
        return list(self._stamps)

    def check_unchanged(self) -> None:
        """Raise CheckpointError if a weight file was replaced or written since it was opened (size,
        mtime or inode differ): what was read from it may mix two versions."""
        for f, stamp in self._stamps.items():
            try:
                now = file_stamp(f)
            except OSError as e:
                raise CheckpointError(f"{f}: became unreadable while it was being read ({os.strerror(e.errno or 0)})") from None
            if now != stamp:
                raise CheckpointError(f"{f}: changed while it was being read (size, modification time or inode differ); "
                                      f"nothing was written, run again once it is stable")

    # -- discovery -------------------------------------------------------------------------------
    def _discover(self, allow_pickle: bool) -> dict[str, TensorInfo]:
        p = self.path
        if p.is_file():
            if p.suffix == ".safetensors":
                return parse_safetensors_header(p)[0]
            if p.suffix.lower() == ".gguf":
                from tsugiki.merging.gguf import open_gguf

                self._gguf = open_gguf(p)
                return dict(self._gguf.infos)
            return self._load_pickle([p], allow_pickle)
        index = p / "model.safetensors.index.json"
        if index.exists():
            return self._from_index(index)
        single = p / "model.safetensors"
        if single.exists():
            return parse_safetensors_header(single)[0]
        candidates = sorted(p.glob("*.safetensors"))
        if len(candidates) == 1:
            return parse_safetensors_header(candidates[0])[0]
        if len(candidates) > 1:
            names = ", ".join(c.name for c in candidates)
            raise CheckpointError(f"{p}: several safetensors files ({names}) and no model.safetensors.index.json")
        pickles = [p / n for n in PICKLE_WEIGHT_FILES if (p / n).exists()]
        if pickles:
            return self._load_pickle(pickles, allow_pickle)
        raise CheckpointError(f"{p}: no model weights found (expected model.safetensors or an index)")

    def _from_index(self, index: Path) -> dict[str, TensorInfo]:
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: invalid index file ({type(e).__name__}: {e})") from None
        infos: dict[str, TensorInfo] = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = index.parent / shard
            if not shard_path.exists():
                raise CheckpointError(f"{index}: shard {shard!r} listed in the index is missing")
            shard_infos = parse_safetensors_header(shard_path)[0]
            for name, info in shard_infos.items():
                if weight_map.get(name) == shard:
                    infos[name] = info
        missing = [n for n in weight_map if n not in infos]
        if missing:
            raise CheckpointError(f"{index}: tensor {missing[0]!r} is in the index but not in shard {weight_map[missing[0]]!r}")
        return infos

    def _load_pickle(self, files: list[Path], allow_pickle: bool) -> dict[str, TensorInfo]:
        if not allow_pickle:
            raise CheckpointError(
                f"{files[0]}: pickle checkpoint refused (it can run code when loaded); "
                "convert it to safetensors or pass --allow-pickle"
            )
        files = [f for f in files if not f.name.endswith(".json")] or files
        if files[0].name.endswith(".index.json"):
            weight_map = json.loads(files[0].read_text())["weight_map"]
            files = [files[0].parent / s for s in sorted(set(weight_map.values()))]
        tensors: dict[str, torch.Tensor] = {}
        for f in files:
            try:
                state = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
            except Exception as e:  # torch raises many types for corrupt pickles
                raise CheckpointError(f"{f}: cannot load pickle checkpoint: {e}") from None
            tensors.update({k: v for k, v in state.items() if isinstance(v, torch.Tensor)})
        self._pickled = tensors
        return {k: TensorInfo(k, v.dtype, tuple(v.shape), files[0], 0, v.numel() * v.element_size()) for k, v in tensors.items()}

    # -- access ----------------------------------------------------------------------------------
    @property
    def model_dir(self) -> Path:
        if self._gguf is not None:
            return self._gguf.side_files_dir()
        return self.path if self.path.is_dir() else self.path.parent

    def names(self) -> list[str]:
        return list(self._infos)

    def info(self, name: str) -> TensorInfo:
        try:
            return self._infos[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: tensor {name!r} not found") from None

    def read(self, name: str) -> torch.Tensor:
        info = self.info(name)
        if self._pickled is not None:
            return self._pickled[name]
        if self._gguf is not None:
            return self._gguf.read(name)
        fd = self._fds.get(info.file)
        if fd is None:
            fd = self._fds[info.file] = os.open(info.file, os.O_RDONLY)
        return read_tensor(info, fd)

    def view(self, name: str) -> torch.Tensor:
        """The tensor mapped zero-copy from its file (private mapping: writes never reach the file).
        Valid until `release(name)` or `close()`."""
        info = self.info(name)
        itemsize = element_size(info.dtype)
        if self._pickled is not None or self._gguf is not None or info.nbytes == 0 or info.offset % itemsize:
            return self.read(name)  # nothing to map (or quantized), or unaligned data that a typed view cannot address
        mm = self._maps.get(info.file)
        if mm is None:
            with open(info.file, "rb") as f:
                mm = self._maps[info.file] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        flat = torch.frombuffer(mm, dtype=info.dtype, count=info.nbytes // itemsize, offset=info.offset)
        return flat.reshape(info.shape)

    def release(self, name: str) -> None:
        """Drop the mapped pages of a viewed tensor from this process (they stay in the page cache)."""
        info = self.info(name)
        mm = self._maps.get(info.file)
        if mm is not None and info.nbytes:
            start = info.offset - info.offset % mmap.PAGESIZE
            mm.madvise(mmap.MADV_DONTNEED, start, info.offset + info.nbytes - start)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        for mm in self._maps.values():
            try:
                mm.close()
            except BufferError:  # a view is still alive somewhere; the map goes when it does
                pass
        self._maps.clear()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def config(self) -> dict | None:
        if self._gguf is not None:
            return self._gguf.config()
        cfg = self.model_dir / "config.json"
        if not cfg.exists():
            return None
        try:
            return json.loads(cfg.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{cfg}: invalid JSON: {e}") from None


class StateDictSource:
    """In-memory tensors behind the same interface as a Checkpoint (for the in-memory merge path)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], *, label: str = "<memory>", config: dict | None = None):
        self.label = label
        self._tensors = dict(tensors)
        self._config = config

    def names(self) -> list[str]:
        return list(self._tensors)

    def info(self, name: str) -> TensorInfo:
        try:
            t = self._tensors[name]
        except KeyError:
            raise CheckpointError(f"{self.label}: tensor {name!r} not found") from None
        return TensorInfo(name, t.dtype, tuple(t.shape), Path(self.label), 0, t.numel() * t.element_size())

    def read(self, name: str) -> torch.Tensor:
        self.info(name)
        return self._tensors[name]

    view = read

    def release(self, name: str) -> None:
        pass

    def config(self) -> dict | None:
        return self._config


def local_path(ref: str, *, base_dir: Path | None = None) -> Path | None:
    """The local file or folder a model reference names, or None (a hub id, or nothing)."""
    p = Path(ref).expanduser()
    candidates = [p] if p.is_absolute() or base_dir is None else [base_dir / p, p]
    return next((c for c in candidates if c.exists()), None)


def resolve_model_ref(ref: str, *, base_dir: Path | None = None) -> Path:
    """A recipe's model reference → a local path. Relative paths resolve against the recipe's folder;
    a Hugging Face hub id is fetched (or taken from the local cache when HF_HUB_OFFLINE=1). A model with
    a LoRA adapter (``MODEL+ADAPTER``) has no path of its own: open it with
    :func:`tsugiki.merging.sources.open_checkpoint`, or
    resolve its MODEL (:func:`tsugiki.merging.refs.split_lora_ref`) where only MODEL's files are read."""
    if split_lora_ref(ref)[1] is not None:
        raise CheckpointError(f"{ref}: a model with a LoRA adapter (MODEL+ADAPTER) is not supported here")
    local = local_path(ref, base_dir=base_dir)
    if local is not None:
        return local
    if HUB_ID.match(ref):
        return _snapshot(ref)
    raise CheckpointError(f"{ref}: model not found (no such local path; not a hub id)")


def _snapshot(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:  # offline, unknown repo, auth: all reported the same way
        raise CheckpointError(f"{repo_id}: not a local path and could not be fetched from the hub ({type(e).__name__})") from None
