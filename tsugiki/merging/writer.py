"""Streaming safetensors output (the directory it goes into: :mod:`tsugiki.merging.output_dir`).

Every output tensor's name, dtype and shape is known from the merge plan before any is computed, so
each shard's header is written first and tensors are appended as they are produced: nothing waits in
memory for a shard to fill.

Writing overlaps computing: `ShardedSafetensorsWriter.write` hands the tensor to one writer thread and
returns, so the caller computes the next tensor (PyTorch's kernels release the GIL, and so does the file
write) while this one goes to disk. `write` hands over a tensor only once the previous one is written,
so two results are alive at most (the one being written, the one being computed), as without the thread
plus one. The bytes and their order are the same as a write in the caller's thread (``background=False``).
"""

from __future__ import annotations

import json
import math
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from tsugiki.errors import MergeError
from tsugiki.merging.tensors import DTYPE_CODES, element_size

DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3  # transformers' default for save_pretrained


@dataclass(frozen=True)
class OutputTensor:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * element_size(self.dtype)


def plan_shards(entries: Sequence[OutputTensor], max_shard_bytes: int) -> list[list[OutputTensor]]:
    shards: list[list[OutputTensor]] = [[]]
    size = 0
    for e in entries:
        if shards[-1] and size + e.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += e.nbytes
    return shards


def _header_bytes(entries: Sequence[OutputTensor], metadata: dict[str, str]) -> bytes:
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for e in entries:
        header[e.name] = {"dtype": DTYPE_CODES[e.dtype], "shape": list(e.shape), "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data section aligned to 8 bytes, as the spec recommends
    return len(raw).to_bytes(8, "little") + raw


def _preallocate(fd: int, size: int) -> None:
    # the shard's size is known up front; reserving it lets the filesystem skip per-write allocation
    try:
        os.posix_fallocate(fd, 0, size)
    except (AttributeError, OSError):  # not every platform or filesystem has it; only a speed-up
        pass


class ShardedSafetensorsWriter:
    """Writes `model.safetensors` (or `model-0000i-of-0000N.safetensors` + index) in plan order.

    ``background=True`` (the default) writes in a thread of its own (see the module doc); a failed write
    (a full disk) is raised by the next `write` or by `close`. A tensor handed to `write` must not be
    changed afterwards (results are fresh tensors, or views of read-only mapped inputs)."""

    def __init__(self, out_dir: Path, entries: Sequence[OutputTensor], *, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                 metadata: dict[str, str] | None = None, prefix: str = "model", background: bool = True):
        self.out_dir = Path(out_dir)
        self.metadata = {"format": "pt", **(metadata or {})}
        self.shards = plan_shards(entries, max_shard_bytes)
        n = len(self.shards)
        self.files = [f"{prefix}.safetensors"] if n == 1 else [f"{prefix}-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self.index_name = f"{prefix}.safetensors.index.json"
        self._order: Iterator[tuple[int, OutputTensor]] = ((i, e) for i, shard in enumerate(self.shards) for e in shard)
        self._open_shard = -1
        self._fh = None
        self._queue: queue.Queue | None = queue.Queue() if background else None
        self._idle = threading.Semaphore(1)  # held from a hand-over until that tensor is written
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def write(self, name: str, tensor: torch.Tensor, *, wait: bool = False) -> None:
        """Hand ``tensor`` over (see the class doc); ``wait``: return only once it is written (for a
        tensor whose memory the caller is about to give back, such as a view of a mapped input)."""
        self._raise_failed()
        try:
            shard, expected = next(self._order)
        except StopIteration:
            raise MergeError(f"writer: tensor {name!r} was not planned") from None
        if expected.name != name or tensor.dtype != expected.dtype or tuple(tensor.shape) != expected.shape:
            raise MergeError(
                f"writer: expected {expected.name} {expected.dtype} {list(expected.shape)}, "
                f"got {name} {tensor.dtype} {list(tensor.shape)}"
            )
        data = tensor.detach().contiguous().reshape(-1)
        if self._queue is None:
            self._write(shard, data)
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._drain, name="tsugiki-writer", daemon=True)
            self._thread.start()
        self._idle.acquire()  # the previous tensor is on disk (or failed): hand over this one
        self._raise_failed()
        self._queue.put((shard, data))
        if wait:
            with self._idle:  # acquired once the writer thread has written it
                pass
            self._raise_failed()

    def _write(self, shard: int, data: torch.Tensor) -> None:
        if shard != self._open_shard:
            self._close_file()
            self._fh = open(self.out_dir / self.files[shard], "wb")
            header = _header_bytes(self.shards[shard], self.metadata)
            _preallocate(self._fh.fileno(), len(header) + sum(e.nbytes for e in self.shards[shard]))
            self._fh.write(header)
            self._open_shard = shard
        if data.numel():
            self._fh.write(memoryview(data.view(torch.uint8).numpy()))

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                if self._error is None:  # after a failure, what comes is dropped
                    self._write(*item)
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                self._error = e
            finally:
                self._idle.release()

    def _stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _raise_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _close_file(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def close(self) -> list[str]:
        """Finish the last shard, write the index if sharded; returns the files written."""
        self._stop()
        self._raise_failed()
        leftover = next(self._order, None)
        self._close_file()
        if leftover is not None:
            raise MergeError(f"writer: tensor {leftover[1].name!r} was planned but never written")
        written = list(self.files)
        if len(self.files) > 1:
            weight_map = {e.name: self.files[i] for i, shard in enumerate(self.shards) for e in shard}
            total = sum(e.nbytes for shard in self.shards for e in shard)
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (self.out_dir / self.index_name).write_text(json.dumps(index, indent=2) + "\n")
            written.append(self.index_name)
        return written

    def abort(self) -> None:
        self._stop()
        self._close_file()
