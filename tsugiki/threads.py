"""Torch CPU thread count for a block of work, restored afterwards."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def torch_threads(n: int | None):
    """Run the block with ``n`` torch CPU threads (``None``: leave the count as it is), then restore it.

    One thread makes float reductions run in a fixed order (bit-identical results on any machine) and is
    the fastest setting for tiny models on a busy machine."""
    import torch

    saved = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(saved)
