"""Whole-tensor sums, norms and dot products whose result does not depend on the thread count.

PyTorch splits a reduction of a whole tensor across its intra-op threads and adds the threads' partial
sums, so ``x.sum()`` (and ``torch.dot``, and an L1 norm) can change in the last bit between 1 and 2
threads, and with them SLERP's angle or DARE's rescale factor. Here a tensor is cut into rows of ``ROW``
entries: PyTorch reduces each row within one thread (it parallelises over rows), in a fixed order, and
the row results (plus the tail) are combined the same way until one value is left; ``ROW`` is below
PyTorch's grain size (32768), so a vector that short is reduced by one thread. A merged model is then
bit for bit the same whatever ``torch.get_num_threads()`` is (tests/merging/test_methods.py checks every method).
"""

from __future__ import annotations

import torch

ROW = 8192
SMALL_DOT = 4096  # torch.dot is single-threaded up to here (measured: it is not at 8192)
DOT_ROWS = 512  # rows per temporary product in `dot` (16 MB of float32)


def _rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = x.reshape(-1)
    n = flat.numel() // ROW * ROW
    return flat[:n].view(-1, ROW), flat[n:]


def _combine(partials: torch.Tensor) -> torch.Tensor:
    while partials.numel() > ROW:
        main, tail = _rows(partials)
        partials = torch.cat([main.sum(dim=-1), tail.sum().reshape(1)])
    return partials.sum()


def total(x: torch.Tensor) -> torch.Tensor:
    """Sum of every entry of ``x`` (a 0-dim tensor of x's dtype)."""
    main, tail = _rows(x)
    return _combine(torch.cat([main.sum(dim=-1), tail.sum().reshape(1)]))


def norm(x: torch.Tensor, ord: int = 2) -> torch.Tensor:
    """L2 (``ord=2``) or L1 (``ord=1``) norm of all of ``x``."""
    main, tail = _rows(x)
    parts = torch.cat([torch.linalg.vector_norm(main, ord=ord, dim=-1), torch.linalg.vector_norm(tail, ord=ord).reshape(1)])
    return _combine(parts) if ord == 1 else _combine(parts.square()).sqrt()


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sum of a * b over all entries (same number of entries). Up to SMALL_DOT entries, ``torch.dot``
    itself (one thread at that size, and what mergekit computes); above, each row's products summed,
    with temporaries of DOT_ROWS rows."""
    if a.numel() <= SMALL_DOT:
        return torch.dot(a.reshape(-1), b.reshape(-1))
    am, at = _rows(a)
    bm, bt = _rows(b)
    parts = [(am[i:i + DOT_ROWS] * bm[i:i + DOT_ROWS]).sum(dim=-1) for i in range(0, am.shape[0], DOT_ROWS)]
    return _combine(torch.cat([*parts, (at * bt).sum().reshape(1)]))


def combine_sums(parts: list[torch.Tensor]) -> torch.Tensor:
    """The sum of per-block sums (one block: that sum itself), in a thread-count-independent order."""
    return parts[0] if len(parts) == 1 else _combine(torch.stack(parts))


def combine_norms(parts: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of a vector from its blocks' L2 norms (one block: that norm itself)."""
    return parts[0] if len(parts) == 1 else _combine(torch.stack(parts).square()).sqrt()
