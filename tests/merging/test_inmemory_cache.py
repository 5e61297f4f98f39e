"""What the in-memory merger remembers between candidates (task vectors, magnitude ranks, random
uniforms, L1 norms) never changes a result: a re-merge with new parameters after a cached one is
bit-for-bit a from-scratch merge, on disk and in memory, for every method; seeds and edited sources
invalidate what was remembered; the budget bounds it."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from tsugiki.merging import selection as sel
from tsugiki.merging import sparsify as sp
from tsugiki.merging.checkpoint import Checkpoint, StateDictSource
from tsugiki.merging.execute import MergeOptions
from tsugiki.merging.inmemory import SORT_SHARE, InMemoryMerger
from tsugiki.merging.methods import METHODS
from tsugiki.merging.recipe import Recipe
from tsugiki.merging.to_disk import merge_to_disk

from helpers import weights

TASK = {"weight": 0.7}  # per-model parameters of the two candidates, by method family
FIRST = {
    "sparse": [{"weight": 0.7, "density": 1.0}, {"weight": 0.4, "density": 0.5}],  # no draws for the first model
    "della": [{"weight": 0.7, "density": 0.5, "epsilon": 0.1}, {"weight": 0.4, "density": 0.3, "epsilon": 0.2}],
    "breadcrumbs": [{"weight": 0.7, "density": 0.6, "gamma": 0.05}, {"weight": 0.4, "density": 0.9, "gamma": 0.2}],
}
SECOND = {
    "sparse": [{"weight": 0.3, "density": 0.3}, {"weight": -0.6, "density": 0.8}],
    "della": [{"weight": 0.3, "density": 0.4, "epsilon": 0.3}, {"weight": 0.9, "density": 0.6, "epsilon": 0.05}],
    "breadcrumbs": [{"weight": 0.3, "density": 0.3, "gamma": 0.01}, {"weight": 0.6, "density": 0.5, "gamma": 0.1}],
}


def recipe(method: str, base, models, second: bool, seed: int = 7) -> Recipe:
    """A two-model recipe of `method` (one model for passthrough, three for model_stock); `second`
    picks the second candidate's parameters."""
    family = "della" if method.startswith("della") else "breadcrumbs" if method.startswith("breadcrumbs") else "sparse"
    params = (SECOND if second else FIRST)[family]
    a, b, c = (str(m) for m in models)
    data: dict = {"merge_method": method, "seed": seed, "base_model": str(base)}
    if method == "linear":
        del data["base_model"]
        data["models"] = [{"model": a, "parameters": {"weight": 0.2 if second else 0.5}},
                          {"model": b, "parameters": {"weight": 0.8 if second else 0.5}}]
    elif method == "slerp":
        data["models"] = [{"model": str(base)}, {"model": a}]
        data["parameters"] = {"t": 0.7 if second else 0.3}
    elif method == "karcher":
        del data["base_model"]
        data["models"] = [{"model": m} for m in (a, b, c)]
        data["parameters"] = {"max_iter": 3 if second else 10}
    elif method == "nearswap":
        data["models"] = [{"model": str(base)}, {"model": a}]
        data["parameters"] = {"t": 0.01 if second else 0.001}
    elif method == "sce":
        data["models"] = [{"model": m} for m in (a, b)]
        data["parameters"] = {"select_topk": 0.4 if second else 1.0}
    elif method == "nuslerp":
        data["models"] = [{"model": a, "parameters": {"weight": 0.3 if second else 1.0}}, {"model": b, "parameters": {"weight": 0.6}}]
        data["parameters"] = {"nuslerp_flatten": second}
    elif method == "multislerp":
        del data["base_model"]
        data["models"] = [{"model": m, "parameters": {"weight": w}} for m, w in zip((a, b, c), (0.2, 0.5, 0.9 if second else 0.1))]
    elif method == "arcee_fusion":
        data["models"] = [{"model": str(base)}, {"model": b if second else a}]
    elif method in ("ram", "ramplus_tl"):
        data["models"] = [{"model": m} for m in (a, b)]
        data["parameters"] = {"epsilon": 1e-3 if second else 1e-5} | ({"r": 0.5, "alpha": 1.0} if method == "ramplus_tl" else {})
    elif method == "passthrough":
        data = {"merge_method": method, "models": [{"model": a, "parameters": {"scale": 0.5 if second else 2.0}}]}
    elif method == "model_stock":
        data["models"] = [{"model": m} for m in (a, b, c)]
        data["parameters"] = {"filter_wise": second}
    elif method == "task_arithmetic":
        data["models"] = [{"model": a, "parameters": TASK}, {"model": b, "parameters": {"weight": -0.2 if second else 0.4}}]
        data["parameters"] = {"lambda": 0.9 if second else 1.0}
    else:
        data["models"] = [{"model": m, "parameters": p} for m, p in zip((a, b), params)]
    return Recipe.from_dict(data)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.int32)  # -0.0 != 0.0; the tiny models are float32


def same_bits(got: dict, want: dict) -> list[str]:
    """Names of the tensors whose bit patterns differ."""
    return [n for n in want if not torch.equal(bits(got[n]), bits(want[n]))]


def state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method", sorted(METHODS.names()))
def test_cached_remerge_equals_fresh_merge(method, tiny_siblings, tmp_path):
    base, models = tiny_siblings.base, tiny_siblings.variants
    sources = {str(p): p for p in (base, *models)}
    first, second = recipe(method, base, models, False), recipe(method, base, models, True)
    cached = InMemoryMerger(AutoModelForCausalLM.from_pretrained(base), sources)
    for _ in range(2):  # the second call also builds what only re-merges make (magnitude ranks)
        cached.apply(first)
    cached.apply(second)  # runs on what the first candidate left in the memos
    fresh = InMemoryMerger(AutoModelForCausalLM.from_pretrained(base), sources, cache_bytes=0)
    fresh.apply(second)
    assert fresh.cache_used == 0
    assert same_bits(state(cached.module), state(fresh.module)) == []
    merge_to_disk(second, tmp_path / "out", MergeOptions(progress=False))
    assert same_bits(state(cached.module), weights(tmp_path / "out")) == []


def dare(base, models, seed: int, densities=(0.4, 0.6)) -> Recipe:
    return Recipe.from_dict({
        "merge_method": "dare_ties", "base_model": str(base), "seed": seed,
        "models": [{"model": str(m), "parameters": {"weight": 0.5, "density": d}} for m, d in zip(models, densities)],
    })


def test_seed_change_invalidates_remembered_uniforms(tiny_siblings):
    base, models = tiny_siblings.base, tiny_siblings.variants[:2]
    sources = {str(p): p for p in (base, *models)}
    cached = InMemoryMerger(AutoModelForCausalLM.from_pretrained(base), sources)
    cached.apply(dare(base, models, 1))
    used = cached.cache_used
    cached.apply(dare(base, models, 2))
    assert cached.cache_used == used  # seed 1's uniforms were dropped, seed 2's took their place
    fresh = InMemoryMerger(AutoModelForCausalLM.from_pretrained(base), sources, cache_bytes=0)
    fresh.apply(dare(base, models, 2))
    assert same_bits(state(cached.module), state(fresh.module)) == []
    cached.apply(dare(base, models, 2, densities=(0.9, 0.1)), seed=1)  # apply's seed overrides the recipe's
    fresh.apply(dare(base, models, 1, densities=(0.9, 0.1)))
    assert same_bits(state(cached.module), state(fresh.module)) == []


def test_source_edited_in_place_invalidates(tiny_siblings):
    base, a = tiny_siblings.base, tiny_siblings.variants[0]
    with Checkpoint(a) as ck:
        tensors, config = {n: ck.read(n).clone() for n in ck.names()}, ck.config()
    edited = StateDictSource(tensors, label="a", config=config)
    ties = Recipe.from_dict({"merge_method": "ties", "base_model": "base",
                             "models": [{"model": "a", "parameters": {"weight": 1.0, "density": 0.5}}]})
    cached = InMemoryMerger(AutoModelForCausalLM.from_pretrained(base), {"base": base, "a": edited})
    cached.apply(ties)
    tensors["model.layers.0.mlp.up_proj.weight"].mul_(-3)  # ranks and task vector of this tensor are stale
    cached.apply(ties)
    fresh = InMemoryMerger(AutoModelForCausalLM.from_pretrained(base), {"base": base, "a": edited}, cache_bytes=0)
    fresh.apply(ties)
    assert same_bits(state(cached.module), state(fresh.module)) == []


@pytest.mark.parametrize("budget", [0, 20_000, 400_000])
def test_budget_bounds_the_cache_and_results_do_not_depend_on_it(tiny_siblings, budget):
    """A budget too small for every tensor: some merge from memos, the rest as without (a uniform
    stream that is partly read, partly drawn must still give the generator's numbers)."""
    base, models = tiny_siblings.base, tiny_siblings.variants[:2]
    sources = {str(p): p for p in (base, *models)}
    model = AutoModelForCausalLM.from_pretrained(base)
    cached = InMemoryMerger(model, sources, cache_bytes=budget)
    unlimited = InMemoryMerger(AutoModelForCausalLM.from_pretrained(base), sources, cache_bytes=1 << 40)
    for method in ("dare_linear", "della", "ties", "breadcrumbs_ties"):
        for second in (False, True, True):
            r = recipe(method, base, (*models, models[0]), second)
            cached.apply(r)
            unlimited.apply(r)
            assert cached.cache_used <= budget
            assert same_bits(state(cached.module), state(unlimited.module)) == [], (method, second)
    assert 0 < cached.cache_used if budget else cached.cache_used == 0
    assert unlimited.cache_used > budget


def test_uniform_stream_reads_and_draws_the_generators_numbers():
    class Tight:  # a memo with room for one tensor of uniforms: later ones are drawn after a catch-up
        def __init__(self):
            self.store = {}

        def get(self, key):
            return self.store.get(key)

        def room(self, nbytes):
            return not self.store

        def put(self, key, value):
            self.store[key] = value
            return True

    memo = Tight()
    for _ in range(2):  # the second pass reads the first block and draws the rest
        stream = sp.UniformStream(torch.Generator().manual_seed(3), memo, "cpu")
        x = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
        got = [sp.bernoulli(x, 0.5, stream), sp.bernoulli(x, 0.5, stream), sp.bernoulli(x[0], 0.3, stream)]
        g = torch.Generator().manual_seed(3)
        want = [sp.bernoulli(x, 0.5, g), sp.bernoulli(x, 0.5, g), sp.bernoulli(x[0], 0.3, g)]
        assert all(torch.equal(bits(a), bits(b)) for a, b in zip(got, want))


@pytest.mark.parametrize("rescale", [False, True])
def test_ranks_give_the_selections_own_masks(rescale):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-4, 5, (40, 25), generator=g) * 0.25  # many ties, signed zeros
    x[0, 3] = -0.0
    desc, asc = sel.magnitude_ranks(x, descending=True), sel.magnitude_ranks(x, descending=False)
    l1 = sp.l1_norm(x)
    for density in (0.01, 0.3, 0.5, 0.97):
        want = sp.magnitude(x, density, rescale)
        assert torch.equal(bits(sp.magnitude(x, density, rescale, ranks=desc, l1=l1)), bits(want))
        for gamma in (0.0, 0.05, 0.5):
            want = sp.magnitude_outliers(x, density, gamma, rescale)
            assert torch.equal(bits(sp.magnitude_outliers(x, density, gamma, rescale, ranks=asc, l1=l1)), bits(want))
    x[1, 1] = float("inf")
    assert sel.magnitude_ranks(x, descending=True) is None  # inf/NaN: selections count, ranks would not


def test_della_ranks_give_the_same_probabilities():
    x = torch.randn(6, 30, generator=torch.Generator().manual_seed(2))
    ranks = sp.della_ranks(x)
    for density, eps in ((0.5, 0.1), (0.3, 0.25)):
        assert torch.equal(bits(sp.della_probabilities(x, density, eps, ranks)), bits(sp.della_probabilities(x, density, eps)))
    assert torch.equal(ranks, sp.della_ranks(x))  # a given `ranks` is read, not written


def test_magnitude_ranks_are_built_a_share_per_candidate(tiny_siblings, tmp_path):
    """TIES's ranks (a sort each) are spread over candidates: each apply sorts about 1/SORT_SHARE of
    the model's entries (one tensor past that at most), until every tensor has them; every
    candidate on the way is bit for bit the on-disk merge."""
    base, models = tiny_siblings.base, tiny_siblings.variants[:2]
    ties = Recipe.from_dict({"merge_method": "ties", "base_model": str(base), "models": [
        {"model": str(m), "parameters": {"weight": 0.6, "density": d}} for m, d in zip(models, (0.5, 0.3))]})
    merger = InMemoryMerger(AutoModelForCausalLM.from_pretrained(base), {str(p): p for p in (base, *models)})
    plan = merger.apply(ties)  # the first candidate selects without ranks
    sizes = [math.prod(job.shape) for job in plan.jobs]
    growth = []
    for _ in range(len(sizes) + 2):
        before = merger.cache_used
        merger.apply(ties)
        growth.append(merger.cache_used - before)
    assert growth[0] > 0 and growth[-1] == 0 and growth[0] < sum(growth)
    assert max(growth) <= 4 * (sum(sizes) // SORT_SHARE + max(sizes))
    merge_to_disk(ties, tmp_path / "out", MergeOptions(progress=False))
    assert same_bits(state(merger.module), weights(tmp_path / "out")) == []


@pytest.mark.parametrize("descending", [False, True])
def test_stable_order_by_bit_patterns_is_the_float_sort(descending):
    g = torch.Generator().manual_seed(4)
    w = (torch.randint(0, 6, (30, 41), generator=g) * 0.5).abs()  # ties, zeros
    w[2, 5], w[7, 1], w[3, 3] = float("inf"), 1e-40, float("nan")  # inf, a subnormal, NaN (sorted last)
    for x, dim in ((w, 1), (w.reshape(-1), -1)):
        want = torch.sort(x, dim=dim, descending=descending, stable=True).indices
        assert torch.equal(sel.stable_order(x, descending=descending, dim=dim), want)
