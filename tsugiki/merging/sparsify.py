"""Sparsification of task vectors (deltas), as used by TIES, DARE, Model Breadcrumbs and DELLA.

Each function takes one delta tensor and returns a tensor of the same shape and dtype where some
entries are zeroed. With ``rescale=True`` the kept entries are multiplied by one scalar so that the
L1 norm of the result equals the L1 norm of the input (skipped when either norm is below 1e-7);
this is mergekit's ``rescale`` (it is *not* the per-entry 1/p of the DARE/DELLA papers, although
for large tensors the factor is close to 1/density).

Conventions shared by all functions (they follow mergekit 0.1.5):
  * ``density >= 1`` returns the input unchanged (no pruning, no rescaling, no random draws);
  * magnitude rankings use |x| (in float32 for 16-bit inputs), and equal magnitudes are ordered by
    position: when only some of a run of equal values fit, the lower flat indices are kept
    ("stable" order). mergekit uses an unstable argsort there, whose tie order is unspecified.
  * random masks are drawn on the generator's device (the engine always passes a CPU generator),
    one float32 uniform per element in row-major order, so a seed gives the same mask on any device
    and the same mask as mergekit's ``torch.bernoulli`` after ``torch.manual_seed(seed)`` on CPU.

Memory: a merge holds one tensor's inputs at a time, so the full-size temporaries of these functions
set the engine's peak. Masks are therefore never materialised whole: selections and draws produce
their keep-mask block by block (see `blocks`), each block is applied as soon as it is made, and
``out=x`` lets a caller that owns ``x`` (a fresh task vector) have it pruned in place instead
of copied, and ``out=`` another tensor has the pruned copy written there (a remembered task vector
is read once, not copied first). Every blockwise or in-place step is element-wise (or an exact count), so the
results are bit-for-bit those of the whole-tensor forms.

Re-merging (evolution re-runs the same tensors with new densities): what depends only on the delta
and the seed can be computed once and passed back in, with the same results: the magnitude ranks
(`magnitude_ranks`: a new density's selection is then one comparison), DELLA's ranks (`della_ranks`)
and the random uniforms (`UniformStream`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import torch

from tsugiki.merging import reduce
from tsugiki.merging import selection
from tsugiki.merging.selection import (MaskBlocks, blocks, constant_blocks, part, rank_blocks, ranking_magnitudes,
                                       ranking_values, scratch, select_blocks, whole_mask)

if TYPE_CHECKING:
    from tsugiki.merging.methods.base import Memo

RESCALE_EPS = 1e-7


def _rescale_by(before: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Scale ``masked`` in place to the L1 norm ``before`` (unless either norm is < 1e-7)."""
    after = reduce.norm(masked, ord=1)
    if before < RESCALE_EPS or after < RESCALE_EPS:
        return masked
    return masked.mul_(before / after)


def rescale_l1(original: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Scale ``masked`` so that sum|masked| == sum|original|, unless either sum is < 1e-7."""
    return _rescale_by(reduce.norm(original, ord=1), masked.clone())


def l1_norm(x: torch.Tensor) -> torch.Tensor:
    """x's L1 norm as ``rescale`` computes it: passed back as ``l1``, it saves that pass."""
    return reduce.norm(x, ord=1)


def _unchanged(x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    return x if out is None or out is x else out.copy_(x)


def _zeros(x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    return torch.zeros_like(x) if out is None else out.zero_()


def _apply(x: torch.Tensor, pieces: MaskBlocks, rescale: bool, out: torch.Tensor | None, l1: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` times the keep-mask given by blocks of flat ``x`` (x * 0 keeps the sign of zeroed
    entries, as mergekit's product does), rescaled to x's L1 norm (``l1``, if at hand) if asked;
    in ``out`` (which may be ``x`` itself) where given and contiguous."""
    before = (l1_norm(x) if l1 is None else l1) if rescale else None
    out = out if out is not None and out.is_contiguous() else torch.empty(x.shape, dtype=x.dtype, device=x.device)
    src, dst = x.reshape(-1), out.view(-1)
    for b, kept in pieces:
        torch.mul(src[b], kept, out=dst[b])
    return _rescale_by(before, out) if rescale else out


def magnitude(x: torch.Tensor, density: float, rescale: bool = False, *, out: torch.Tensor | None = None,
              ranks: torch.Tensor | None = None, l1: torch.Tensor | None = None) -> torch.Tensor:
    """TIES trim step (Yadav et al. 2023, arXiv:2306.01708): keep the ``max(1, int(density * n))``
    entries of largest magnitude; ``density <= 0`` (or an empty tensor) gives all zeros.
    ``out``: where the result goes (``x`` itself: prune it in place). ``ranks``: x's descending
    `magnitude_ranks`, if at hand (same result, no selection); ``l1``: its `l1_norm`, if at hand.
    """
    if density >= 1:
        return _unchanged(x, out)
    if density <= 0 or x.numel() == 0:
        return _zeros(x, out)
    k = max(1, int(density * x.numel()))
    if ranks is not None:
        return _apply(x, rank_blocks(ranks, 0, k, x.dtype), rescale, out, l1)
    return _apply(x, select_blocks(ranking_values(x), k, largest=True), rescale, out, l1)


def magnitude_outliers(
    x: torch.Tensor, density: float, gamma: float = 0.01, rescale: bool = False, *, out: torch.Tensor | None = None,
    ranks: torch.Tensor | None = None, l1: torch.Tensor | None = None,
) -> torch.Tensor:
    """Model Breadcrumbs (Davari & Belilovsky 2023, arXiv:2312.06795): drop the ``int(gamma * n)``
    largest-magnitude entries and the smallest ones, keeping ``int(density * n)`` entries.

    With n_keep = int(density*n) and n_top = int(gamma*n), the kept entries are those of ascending
    magnitude rank in [n_bot, n_bot + n_keep) with n_bot = max(0, n - n_keep - n_top): when
    n_keep + n_top > n, fewer outliers are removed so that n_keep entries remain. ``ranks``: x's
    ascending `magnitude_ranks`, ``l1`` its `l1_norm`, if at hand.
    """
    if density >= 1:
        return _unchanged(x, out)
    n = x.numel()
    n_keep = max(0, int(density * n))
    n_top = int(gamma * n)
    n_bot = max(0, n - n_keep - n_top)
    if n_keep == 0:
        return _apply(x, constant_blocks(n, False, x.dtype, x.device), rescale, out, l1)
    if ranks is not None:
        return _apply(x, rank_blocks(ranks, n_bot, n_bot + n_keep, x.dtype), rescale, out, l1)
    w = ranking_values(x)
    pieces: MaskBlocks = select_blocks(w, n_bot + n_keep, largest=False)
    if n_bot > 0:  # ranks [n_bot, n_bot + n_keep): the n_bot + n_keep smallest minus the n_bot smallest
        lowest = select_blocks(w, n_bot, largest=False)
        pieces = ((b, kept.mul_(low.neg_().add_(1))) for (b, kept), (_, low) in zip(pieces, lowest))
    return _apply(x, pieces, rescale, out, l1)


class UniformStream:
    """The float32 uniforms that a seeded generator yields, in draw order, remembered in a `Memo`
    between calls: a kernel re-run with the same seed reads them instead of drawing them again
    (drawing is most of DARE's cost). Pass it where a generator goes (`bernoulli`,
    `della_magprune`): the masks are the generator's own. Uniforms that the memo has no room for
    are drawn as usual, after skipping those that were read instead of drawn."""

    def __init__(self, generator: torch.Generator, memo: Memo, device: torch.device | str):
        self.generator, self.memo, self.device = generator, memo, torch.device(device)
        self.position = 0  # uniforms of the stream consumed so far
        self._drawn = 0  # of which the generator has drawn

    def take(self, n: int) -> torch.Tensor | None:
        """The next n uniforms (on `device`), read, or drawn and remembered; None when the memo has
        no room for them: draw them from `generator` then, which is positioned for that."""
        key = ("uniforms", self.position, n)
        u = self.memo.get(key)
        if u is None:
            self._catch_up()
            if self.memo.room(4 * n):
                u = torch.empty(n, dtype=torch.float32, device=self.generator.device).uniform_(generator=self.generator)
                u = u.to(self.device)
                self.memo.put(key, u)
            self._drawn += n
        self.position += n
        return u

    def _catch_up(self) -> None:
        """Draw (and drop) the uniforms that were read from the memo instead of drawn."""
        behind = self.position - self._drawn
        if behind:
            buf = scratch(behind, torch.float32, self.generator.device)
            for b in blocks(behind):
                part(buf, b).uniform_(generator=self.generator)
        self._drawn = self.position


def _draw_blocks(p: torch.Tensor | float, n: int, generator: torch.Generator | UniformStream) -> Iterator[tuple[slice, torch.Tensor]]:
    """Keep-mask blocks (float32) with P(keep) = p (a float or a tensor of n probabilities). `rand < p`
    consumes the generator exactly as `torch.bernoulli(p)` does on CPU (one float32 uniform per
    element, same order), so the masks are identical, at a third of the cost and without
    materialising a tensor of p for a scalar density. CPU draws are sequential, so drawing block
    by block consumes the generator exactly as one whole-tensor draw does. A `UniformStream`
    gives the same uniforms, remembered ones on its device."""
    if isinstance(generator, UniformStream):
        u = generator.take(n)
        if u is not None:
            yield from _compare_blocks(u, p)
            return
        generator = generator.generator
        if isinstance(p, torch.Tensor):
            p = p.to(generator.device)
    device = generator.device
    flat_p = p.reshape(-1) if isinstance(p, torch.Tensor) else None
    if device.type != "cpu":  # other devices' generators are not sequential: one draw
        u = torch.rand(n, generator=generator, dtype=torch.float32, device=device)
        u.copy_(u < (p if flat_p is None else flat_p))
        yield from ((b, u[b]) for b in blocks(n))
        return
    u = scratch(n, torch.float32, device)
    for b in blocks(n):
        draws = part(u, b).uniform_(generator=generator)  # what torch.rand does
        yield b, draws.lt_(p if flat_p is None else flat_p[b])


def _compare_blocks(u: torch.Tensor, p: torch.Tensor | float) -> Iterator[tuple[slice, torch.Tensor]]:
    """Keep-mask blocks (float32) of ``u < p`` for given uniforms (the comparison of `_draw_blocks`)."""
    n = u.numel()
    flat_p = p.reshape(-1).to(u.device) if isinstance(p, torch.Tensor) else None
    mask = scratch(n, torch.float32, u.device)
    for b in blocks(n):
        yield b, torch.lt(u[b], p if flat_p is None else flat_p[b], out=part(mask, b))


def _draw(p: torch.Tensor | float, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """The whole bool keep-mask of `_draw_blocks`, shaped ``shape``, on the generator's device."""
    return whole_mask(_draw_blocks(p, shape.numel(), generator), shape.numel(), generator.device).reshape(shape)


def _on(device: torch.device, pieces: MaskBlocks) -> Iterator[tuple[slice, torch.Tensor]]:
    return ((b, kept.to(device)) for b, kept in pieces)


def bernoulli(
    x: torch.Tensor, density: float, generator: torch.Generator | UniformStream, rescale: bool = False, *,
    out: torch.Tensor | None = None, l1: torch.Tensor | None = None,
) -> torch.Tensor:
    """DARE drop (Yu et al. 2023, arXiv:2311.03099): keep each entry independently with
    probability ``density`` (probabilities in float32; draws happen even for density <= 0).
    ``l1``: x's `l1_norm`, if at hand."""
    if density >= 1:
        return _unchanged(x, out)
    return _apply(x, _on(x.device, _draw_blocks(float(density), x.numel(), generator)), rescale, out, l1)


def della_ranks(x: torch.Tensor) -> torch.Tensor:
    """r / (m - 1) for each entry's stable magnitude rank r in 0..m-1 along dim 1 (see
    `della_probabilities`), float32, shape of x: what DELLA's probabilities take from x. Rows of
    length m <= 1 give zeros (they are not ranked)."""
    t = x.detach()
    if t.dim() < 2:
        t = t.reshape(1, -1)
    m = t.shape[1]
    if m <= 1:
        return torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    ranks = torch.empty(t.shape, dtype=torch.float32, device=t.device)
    positions = torch.arange(m, dtype=torch.float32, device=t.device)
    # a block of rows at a time (2-D): the magnitudes and the int64 order (twice the result's size) are
    # block-sized; each row's ranks are its own, so the result is the whole-tensor one
    step = max(1, selection.MIN_BLOCK // m) if t.dim() == 2 else t.shape[0]
    for r in range(0, t.shape[0], step):
        rows = t[r:r + step]
        order = selection.stable_order(ranking_magnitudes(rows).reshape(rows.shape), dim=1)
        ranks[r:r + step].scatter_(1, order, positions.reshape((1, m) + (1,) * (t.dim() - 2)).expand(rows.shape))
    del order
    return ranks.div_(m - 1).clamp_(0, 1).reshape(x.shape)


def della_probabilities(x: torch.Tensor, density: float, epsilon: float, ranks: torch.Tensor | None = None) -> torch.Tensor:
    """DELLA MagPrune keep probabilities (float32, on x's device, shape of x).

    Entries are ranked by magnitude along dim 1 (a 1-D tensor is one row; for >2-D tensors the
    ranking runs along dim 1 exactly as in mergekit), rank r in 0..m-1 (stable), and
    p = (density - epsilon) + (r / (m - 1)) * 2 * epsilon, i.e. linear from density-epsilon for the
    smallest to density+epsilon for the largest. A row of length 1 gets p = density (mergekit
    fails there with a probability of NaN). ``ranks``: x's `della_ranks`, if at hand.
    """
    m = x.shape[1] if x.dim() >= 2 else x.numel()
    if m <= 1:
        return torch.full(x.shape, float(density), dtype=torch.float32, device=x.device)
    # (density - epsilon) + clamp(r / (m - 1), 0, 1) * 2 * epsilon, each step in place
    doubled = della_ranks(x).mul_(2) if ranks is None else ranks.mul(2)  # a given `ranks` stays as it is
    return doubled.mul_(epsilon).add_(density - epsilon)


def della_magprune(
    x: torch.Tensor,
    density: float,
    epsilon: float,
    generator: torch.Generator | UniformStream,
    rescale: bool = False,
    *,
    out: torch.Tensor | None = None,
    ranks: torch.Tensor | None = None,
    l1: torch.Tensor | None = None,
) -> torch.Tensor:
    """DELLA MagPrune (Deep et al. 2024, arXiv:2406.11617): keep each entry with a probability
    that grows with its magnitude rank, from density-epsilon to density+epsilon.

    ``density <= 0`` gives zeros; otherwise density ± epsilon must lie in (0, 1) (ValueError).
    ``ranks``: x's `della_ranks`, ``l1`` its `l1_norm`, if at hand.
    """
    if density >= 1:
        return _unchanged(x, out)
    if density <= 0:
        return _zeros(x, out)
    if density + epsilon >= 1 or density - epsilon <= 0:
        raise ValueError(
            f"density ± epsilon must lie in (0, 1) (density={density}, epsilon={epsilon})"
        )
    p = della_probabilities(x, density, epsilon, ranks).to(generator.device)
    return _apply(x, _on(x.device, _draw_blocks(p, x.numel(), generator)), rescale, out, l1)
