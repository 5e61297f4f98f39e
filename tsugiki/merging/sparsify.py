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
``inplace=True`` lets a caller that owns ``x`` (a fresh task vector) have it pruned in place
instead of copied. Every blockwise or in-place step is element-wise (or an exact count), so the
results are bit-for-bit those of the whole-tensor forms.

Re-merging (evolution re-runs the same tensors with new densities): what depends only on the delta
and the seed can be computed once and passed back in, with the same results: the magnitude ranks
(`magnitude_ranks`: a new density's selection is then one comparison), DELLA's ranks (`della_ranks`)
and the random uniforms (`UniformStream`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Iterator

import torch

from tsugiki.merging import reduce

if TYPE_CHECKING:
    from tsugiki.merging.methods.base import Memo

RESCALE_EPS = 1e-7
MIN_BLOCK = 1 << 22  # entries (16 MB of float32)

# (block of the flat tensor, its keep-mask as 1.0 / 0.0): float, because float * bool would first
# copy the bool operand to float (on CPU), and the producers have a free float buffer at hand. CPU
# kernels that read or write bool tensors are not vectorised (several times slower than float ones):
# comparisons write their 1.0 / 0.0 straight into float buffers (``out=`` or in place) where they can.
MaskBlocks = Iterable[tuple[slice, torch.Tensor]]


def block_size(n: int) -> int:
    """Entries per block of the blockwise passes over n entries: at most 8 blocks (each torch call
    has a fixed cost, large on a busy machine), so a block's temporaries are at most 1/8 of the
    full-size ones, and at least MIN_BLOCK entries (smaller tensors are done in one block)."""
    return max(MIN_BLOCK, -(-n // 8))


def blocks(n: int) -> list[slice]:
    """Slices covering range(n), `block_size(n)` entries each (the last one shorter)."""
    size = block_size(n)
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def scratch(n: int, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """A one-block buffer for the blockwise passes over n entries: block temporaries are written
    into it with ``out=`` (see `part`) instead of being allocated per block, which glibc's heap
    would keep resident, fragmented, past the block."""
    return torch.empty(min(block_size(n), n), dtype=dtype, device=device)


def part(buf: torch.Tensor, b: slice) -> torch.Tensor:
    """The first len(b) entries of the scratch ``buf``: where block ``b``'s temporary goes."""
    return buf[: b.stop - b.start]


def _rescale_by(before: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Scale ``masked`` in place to the L1 norm ``before`` (unless either norm is < 1e-7)."""
    after = reduce.norm(masked, ord=1)
    if before < RESCALE_EPS or after < RESCALE_EPS:
        return masked
    return masked.mul_(before / after)


def rescale_l1(original: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Scale ``masked`` so that sum|masked| == sum|original|, unless either sum is < 1e-7."""
    return _rescale_by(reduce.norm(original, ord=1), masked.clone())


def _ranking_magnitudes(x: torch.Tensor) -> torch.Tensor:
    w = x.detach().abs().reshape(-1)
    if w.dtype in (torch.float16, torch.bfloat16):
        w = w.float()  # exact upcast: same order, and kthvalue/sort support on every device
    return w


def _ranking_values(x: torch.Tensor) -> torch.Tensor:
    """Flat ``x`` for the selections below, which rank |values| themselves: no full-size |x| copy
    (16-bit inputs are upcast to float32 as in `_ranking_magnitudes`)."""
    w = x.detach().reshape(-1)
    return w.float() if w.dtype in (torch.float16, torch.bfloat16) else w


def _radix_select(w: torch.Tensor, m: int) -> tuple[int, int, int, bool]:
    """For the 1-D float32 ``w``: the bit pattern of the m-th smallest |w| (1-based), how many |w|
    have a smaller and how many the same bit pattern, and whether every |w| is finite.

    Non-negative floats order like their int32 bit patterns (the sign bit is masked off): a
    histogram of bits 16..30 finds the bucket holding the m-th value, a histogram of the low 16
    bits inside that bucket finds the value itself. Exact, and about 5x faster than
    `torch.kthvalue` on CPU for the tens of millions of entries of LLM tensors.
    """
    bits = w.reshape(-1).view(torch.int32)
    n = bits.numel()
    h, sel = scratch(n, torch.int32, w.device), scratch(n, torch.bool, w.device)

    def high_bits(b: slice) -> torch.Tensor:
        return torch.bitwise_right_shift(bits[b], 16, out=part(h, b)).bitwise_and_(0x7FFF)

    # histograms by index_add_ (a plain serial loop; bincount adds two full reductions per call)
    one = torch.ones(1, dtype=torch.int64, device=w.device)
    high = torch.zeros(1 << 15, dtype=torch.int64, device=w.device)
    for b in blocks(n):
        high.index_add_(0, high_bits(b), one.expand(b.stop - b.start))
    high_below = high.cumsum(0)
    bucket = int(torch.searchsorted(high_below, m))
    before = int(high_below[bucket - 1]) if bucket > 0 else 0
    # low bits of the entries in the bucket; the others go to an extra bin (no variable-size
    # selection, whose allocations would fragment the heap)
    low = torch.zeros((1 << 16) + 1, dtype=torch.int64, device=w.device)
    for b in blocks(n):
        outside = torch.ne(high_bits(b), bucket, out=part(sel, b))
        low_bits = torch.bitwise_and(bits[b], 0xFFFF, out=part(h, b)).masked_fill_(outside, 1 << 16)
        low.index_add_(0, low_bits, one.expand(b.stop - b.start))
    low = low[: 1 << 16]
    low_below = low.cumsum(0)
    v = int(torch.searchsorted(low_below, m - before))
    below = before + (int(low_below[v - 1]) if v > 0 else 0)
    finite = int(high[0x7F80:].sum()) == 0  # bucket 0x7F80 and up: inf and NaN
    return (bucket << 16) | v, below, int(low[v]), finite


def _from_bits(value_bits: int, device: torch.device) -> torch.Tensor:
    return torch.tensor([value_bits], dtype=torch.int32, device=device).view(torch.float32)[0]


def kth_smallest(w: torch.Tensor, m: int) -> torch.Tensor:
    """The m-th smallest (1-based) of the magnitudes |w| of the 1-D ``w`` (``w`` may hold the
    magnitudes themselves or the signed values). float32: radix select (see `_radix_select`), in
    blocks so that no full-size copy is made; other dtypes: `torch.kthvalue`."""
    if w.dtype != torch.float32:
        return torch.kthvalue(w.abs(), m).values
    return _from_bits(_radix_select(w, m)[0], w.device)


def magnitude_ranks(x: torch.Tensor, descending: bool) -> torch.Tensor | None:
    """Each entry's position (int32, flat) in the stable order of |x| (equal magnitudes lowest index
    first), descending or ascending: the selections below keep exactly the entries whose rank is
    below their count, so these ranks, passed back as ``ranks``, turn a new density's selection
    into one comparison. None where x has inf/NaN (whose selection follows comparisons, not order)."""
    w = _ranking_magnitudes(x)
    if not bool(torch.isfinite(w).all()):
        return None
    order = torch.sort(w, descending=descending, stable=True).indices
    ranks = torch.empty(w.numel(), dtype=torch.int32 if w.numel() < 2**31 else torch.int64, device=w.device)
    return ranks.scatter_(0, order, torch.arange(w.numel(), dtype=ranks.dtype, device=w.device))


def _rank_blocks(ranks: torch.Tensor, lo: int, hi: int, dtype: torch.dtype) -> Iterator[tuple[slice, torch.Tensor]]:
    """Keep-mask blocks (in ``dtype``) of lo <= rank < hi: what `_select_blocks` gives, read off
    `magnitude_ranks`."""
    n = ranks.numel()
    mask = scratch(n, dtype, ranks.device)
    low = scratch(n, dtype, ranks.device) if lo > 0 else None
    for b in blocks(n):
        kept = torch.lt(ranks[b], hi, out=part(mask, b))
        if low is not None:
            kept.mul_(torch.ge(ranks[b], lo, out=part(low, b)))
        yield b, kept


def _threshold(w: torch.Tensor, m: int) -> tuple[torch.Tensor, int, int, int]:
    """v = the m-th smallest |w| and the numbers of entries with |w| < v, == v and > v."""
    n = w.numel()
    if w.dtype == torch.float32:
        value_bits, below, tied, finite = _radix_select(w, m)
        v = _from_bits(value_bits, w.device)
        if finite:  # bit order is float order: the counts come with the histograms
            return v, below, tied, n - below - tied
    else:
        v = torch.kthvalue(w.abs(), m).values
    # other dtypes, or inf/NaN present (NaN compares false to everything): count
    below = tied = above = 0
    a = scratch(n, w.dtype, w.device)
    for b in blocks(n):
        mag = torch.abs(w[b], out=part(a, b))
        below += int(torch.count_nonzero(mag < v))
        tied += int(torch.count_nonzero(mag == v))
        above += int(torch.count_nonzero(mag > v))
    return v, below, tied, above


def _constant_blocks(n: int, keep: bool, dtype: torch.dtype, device: torch.device | str) -> MaskBlocks:
    mask = scratch(n, dtype, device).fill_(float(keep))
    return [(b, part(mask, b)) for b in blocks(n)]


def _select_blocks(w: torch.Tensor, want: int, largest: bool) -> Iterator[tuple[slice, torch.Tensor]]:
    """Keep-mask blocks (in w's dtype) of the ``want`` largest (or smallest) magnitudes |w| of the
    1-D ``w``, equal values taken lowest index first (stable order). Each block of ``w`` is read
    before its mask is yielded and never after, so the caller may overwrite it then; a mask block
    is valid until the next one.
    """
    n = w.numel()
    if want <= 0 or want >= n:
        yield from _constant_blocks(n, want > 0, w.dtype, w.device)
        return
    v, below, tied, above = _threshold(w, n - want + 1 if largest else want)
    # |w| on the kept side of v, v included, minus `want`: how many of the tied entries must go;
    # those kept are the first ones by position
    surplus = (above if largest else below) + tied - want
    allowed = max(0, tied - surplus)
    a, keep = scratch(n, w.dtype, w.device), scratch(n, torch.bool, w.device)
    eq = scratch(n, torch.bool, w.device) if surplus > 0 else None
    seen = 0  # tied entries kept so far
    for b in blocks(n):
        mag = torch.abs(w[b], out=part(a, b))
        kept = (torch.ge if largest else torch.le)(mag, v, out=part(keep, b))
        if eq is not None:  # drop the tied entries past the first `allowed`
            tied_here = torch.eq(mag, v, out=part(eq, b))
            stay = allowed - seen  # how many more tied entries stay
            count = int(torch.count_nonzero(tied_here)) if stay > 0 else 0
            if 0 < stay and count <= stay:
                seen += count  # all of this block's tied entries stay
            else:
                if stay > 0:  # the first `stay` of them stay: unmark those
                    cumulative = part(scratch(n, torch.int32, w.device), b)
                    torch.cumsum(tied_here, 0, dtype=torch.int32, out=cumulative)
                    tied_here[: int(torch.searchsorted(cumulative, stay, right=True))] = False
                    seen = allowed
                kept.logical_and_(tied_here.logical_not_())
        yield b, mag.copy_(kept)  # |w| of this block is no longer needed: its buffer holds the mask


def _whole(pieces: MaskBlocks, n: int, device: torch.device | str) -> torch.Tensor:
    """The full bool mask from its blocks."""
    mask = torch.empty(n, dtype=torch.bool, device=device)
    for b, kept in pieces:
        mask[b] = kept  # 1.0 -> True, 0.0 -> False
    return mask


def smallest_mask(w: torch.Tensor, m: int) -> torch.Tensor:
    """Bool mask of the ``m`` smallest magnitudes |w| of the 1-D ``w`` in stable ascending order.

    O(n) selection instead of a full sort; equal values are taken lowest index first.
    """
    return _whole(_select_blocks(w, m, largest=False), w.numel(), w.device)


def largest_mask(w: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the ``k`` largest magnitudes |w| of the 1-D ``w`` in stable descending order
    (equal values are taken lowest index first)."""
    return _whole(_select_blocks(w, k, largest=True), w.numel(), w.device)


def l1_norm(x: torch.Tensor) -> torch.Tensor:
    """x's L1 norm as ``rescale`` computes it: passed back as ``l1``, it saves that pass."""
    return reduce.norm(x, ord=1)


def _apply(x: torch.Tensor, pieces: MaskBlocks, rescale: bool, inplace: bool, l1: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` times the keep-mask given by blocks of flat ``x`` (x * 0 keeps the sign of zeroed
    entries, as mergekit's product does), rescaled to x's L1 norm (``l1``, if at hand) if asked;
    in ``x`` itself when ``inplace`` (and x is contiguous)."""
    before = (l1_norm(x) if l1 is None else l1) if rescale else None
    out = x if inplace and x.is_contiguous() else torch.empty(x.shape, dtype=x.dtype, device=x.device)
    src, dst = x.reshape(-1), out.view(-1)
    for b, kept in pieces:
        torch.mul(src[b], kept, out=dst[b])
    return _rescale_by(before, out) if rescale else out


def magnitude(x: torch.Tensor, density: float, rescale: bool = False, *, inplace: bool = False,
              ranks: torch.Tensor | None = None, l1: torch.Tensor | None = None) -> torch.Tensor:
    """TIES trim step (Yadav et al. 2023, arXiv:2306.01708): keep the ``max(1, int(density * n))``
    entries of largest magnitude; ``density <= 0`` (or an empty tensor) gives all zeros.
    ``inplace``: the caller owns ``x``, prune it in place and return it. ``ranks``: x's descending
    `magnitude_ranks`, if at hand (same result, no selection); ``l1``: its `l1_norm`, if at hand.
    """
    if density >= 1:
        return x
    if density <= 0 or x.numel() == 0:
        return x.zero_() if inplace else torch.zeros_like(x)
    k = max(1, int(density * x.numel()))
    if ranks is not None:
        return _apply(x, _rank_blocks(ranks, 0, k, x.dtype), rescale, inplace, l1)
    return _apply(x, _select_blocks(_ranking_values(x), k, largest=True), rescale, inplace, l1)


def magnitude_outliers(
    x: torch.Tensor, density: float, gamma: float = 0.01, rescale: bool = False, *, inplace: bool = False,
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
        return x
    n = x.numel()
    n_keep = max(0, int(density * n))
    n_top = int(gamma * n)
    n_bot = max(0, n - n_keep - n_top)
    if n_keep == 0:
        return _apply(x, _constant_blocks(n, False, x.dtype, x.device), rescale, inplace, l1)
    if ranks is not None:
        return _apply(x, _rank_blocks(ranks, n_bot, n_bot + n_keep, x.dtype), rescale, inplace, l1)
    w = _ranking_values(x)
    pieces: MaskBlocks = _select_blocks(w, n_bot + n_keep, largest=False)
    if n_bot > 0:  # ranks [n_bot, n_bot + n_keep): the n_bot + n_keep smallest minus the n_bot smallest
        lowest = _select_blocks(w, n_bot, largest=False)
        pieces = ((b, kept.mul_(low.neg_().add_(1))) for (b, kept), (_, low) in zip(pieces, lowest))
    return _apply(x, pieces, rescale, inplace, l1)


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
    return _whole(_draw_blocks(p, shape.numel(), generator), shape.numel(), generator.device).reshape(shape)


def _on(device: torch.device, pieces: MaskBlocks) -> Iterator[tuple[slice, torch.Tensor]]:
    return ((b, kept.to(device)) for b, kept in pieces)


def bernoulli(
    x: torch.Tensor, density: float, generator: torch.Generator | UniformStream, rescale: bool = False, *,
    inplace: bool = False, l1: torch.Tensor | None = None,
) -> torch.Tensor:
    """DARE drop (Yu et al. 2023, arXiv:2311.03099): keep each entry independently with
    probability ``density`` (probabilities in float32; draws happen even for density <= 0).
    ``l1``: x's `l1_norm`, if at hand."""
    if density >= 1:
        return x
    return _apply(x, _on(x.device, _draw_blocks(float(density), x.numel(), generator)), rescale, inplace, l1)


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
    step = max(1, MIN_BLOCK // m) if t.dim() == 2 else t.shape[0]
    for r in range(0, t.shape[0], step):
        rows = t[r:r + step]
        order = torch.argsort(_ranking_magnitudes(rows).reshape(rows.shape), dim=1, stable=True)
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
    inplace: bool = False,
    ranks: torch.Tensor | None = None,
    l1: torch.Tensor | None = None,
) -> torch.Tensor:
    """DELLA MagPrune (Deep et al. 2024, arXiv:2406.11617): keep each entry with a probability
    that grows with its magnitude rank, from density-epsilon to density+epsilon.

    ``density <= 0`` gives zeros; otherwise density ± epsilon must lie in (0, 1) (ValueError).
    ``ranks``: x's `della_ranks`, ``l1`` its `l1_norm`, if at hand.
    """
    if density >= 1:
        return x
    if density <= 0:
        return x.zero_() if inplace else torch.zeros_like(x)
    if density + epsilon >= 1 or density - epsilon <= 0:
        raise ValueError(
            f"density ± epsilon must lie in (0, 1) (density={density}, epsilon={epsilon})"
        )
    p = della_probabilities(x, density, epsilon, ranks).to(generator.device)
    return _apply(x, _on(x.device, _draw_blocks(p, x.numel(), generator)), rescale, inplace, l1)
