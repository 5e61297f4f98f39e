"""Tensors that every source holds bit for bit are copied from the base instead of merged, on disk and
in memory, and the result is bit for bit the computed one: for every task-vector method, with
positive and negative weights (the merged zero task vector is +0.0 or -0.0, which decides what
becomes of the base's -0.0 entries), and never where one source differs in the tensor."""

from __future__ import annotations

import pytest
import torch
from helpers import copy_model, weights
from transformers import AutoModelForCausalLM

from tsugiki.errors import MergeError
from tsugiki.merging.checkpoint import Checkpoint
from tsugiki.merging.execute import BASE_PLUS_TASK_VECTORS, MergeOptions, inputs_unchanged, iter_merged, unchanged_result
from tsugiki.merging.inmemory import InMemoryMerger
from tsugiki.merging.methods import METHODS
from tsugiki.merging.plan import plan_merge
from tsugiki.merging.recipe import Recipe
from tsugiki.merging.to_disk import merge_to_disk

EMBED = "model.embed_tokens.weight"
CHANGED = ("self_attn.q_proj", "self_attn.v_proj")  # what the "LoRA fine-tunes" below change


def _with_negative_zeros(t: dict) -> dict:
    t[EMBED][0, :5] = -0.0  # a base with -0.0 entries: base + (+0.0) is not the base bit for bit there
    return t


def _finetune(seed: int, which: str, nudge_embed: bool = False):
    def edit(t: dict) -> dict:
        g = torch.Generator().manual_seed(seed)
        for name in t:
            if which in name:
                t[name] = t[name] + 0.05 * torch.randn(t[name].shape, generator=g)
        if nudge_embed:  # one entry one ulp off: the sources no longer agree on the embedding
            t[EMBED][3, 3] = torch.nextafter(t[EMBED][3, 3], torch.tensor(1.0))
        return t
    return edit


@pytest.fixture(scope="module")
def family(tiny_siblings, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora_family")
    base = copy_model(tiny_siblings.base, root / "base", _with_negative_zeros)
    return {"base": base, "a": copy_model(base, root / "a", _finetune(1, CHANGED[0])),
            "b": copy_model(base, root / "b", _finetune(2, CHANGED[1])),
            "b_nudged": copy_model(base, root / "b_nudged", _finetune(2, CHANGED[1], nudge_embed=True))}


def _params(method: str, sign: float) -> list[dict]:
    extra = ({"density": 0.5, "epsilon": 0.1} if method.startswith("della") else
             {"density": 0.6, "gamma": 0.05} if method.startswith("breadcrumbs") else
             {"density": 0.5} if method != "task_arithmetic" else {})
    return [{"weight": 0.7 * sign, **extra}, {"weight": 0.4, **extra} if sign > 0 else {"weight": -0.3, **extra}]


def _recipe(method: str, family, sign: float, second: str = "b") -> Recipe:
    return Recipe.from_dict({
        "merge_method": method, "base_model": str(family["base"]), "seed": 3,
        "parameters": {"lambda": 1.0 if sign > 0 else 0.8},
        "models": [{"model": str(family[m]), "parameters": p} for m, p in zip(("a", second), _params(method, sign))],
    })


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.int32)  # the tiny models are float32


def _differing(got: dict, want: dict) -> list[str]:
    assert set(got) == set(want)
    return [n for n in want if not torch.equal(_bits(got[n]), _bits(want[n]))]


def _open(recipe: Recipe) -> dict:
    return {r: Checkpoint(r, label=r) for r in recipe.model_refs()}


def _computed(recipe: Recipe) -> dict:
    """Every tensor merged by its kernel (no shortcut), streamed from the files."""
    sources = _open(recipe)
    plan = plan_merge(recipe, sources)
    out = {job.out_name: t.clone() for job, t in iter_merged(plan, sources, copy_unchanged=False)}
    for s in sources.values():
        s.close()
    return out


def _state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["positive", "negative"])
@pytest.mark.parametrize("method", sorted(BASE_PLUS_TASK_VECTORS))
def test_copy_equals_computed_merge(method, sign, family, tmp_path):
    recipe = _recipe(method, family, sign)
    sources = _open(recipe)
    plan = plan_merge(recipe, sources)
    unchanged = {job.out_name for job in plan.jobs if inputs_unchanged(job, plan, sources)}
    taken = {job.out_name for job in plan.jobs if job.out_name in unchanged and unchanged_result(job, plan, sources, "cpu") is not None}
    for s in sources.values():
        s.close()
    assert EMBED in taken and unchanged == taken  # the shortcut applies to the embedding ...
    assert not any(c in n for n in unchanged for c in CHANGED)  # ... and never to a changed tensor
    want = _computed(recipe)
    if sign > 0:  # +0.0 task vectors: the kernel turned the base's -0.0 into +0.0, and so must the copy
        assert torch.equal(_bits(want[EMBED][0, :5]), torch.zeros(5, dtype=torch.int32))
    on_disk = merge_to_disk(recipe, tmp_path / "out", MergeOptions(progress=False)).out
    assert _differing(weights(on_disk), want) == []
    merged = {}
    for copy in (True, False):
        merger = InMemoryMerger(AutoModelForCausalLM.from_pretrained(family["base"]), {str(p): p for p in family.values()},
                                copy_unchanged=copy)
        for _ in range(2):  # the second apply uses what the first one found out about the inputs
            merger.apply(recipe)
        merged[copy] = {n: t for n, t in _state(merger.module).items() if n in want}
    assert _differing(merged[True], want) == [] and _differing(merged[False], want) == []


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "dare_linear"])
def test_no_copy_where_a_source_differs(method, family, tmp_path):
    recipe = _recipe(method, family, 1.0, second="b_nudged")
    sources = _open(recipe)
    plan = plan_merge(recipe, sources)
    jobs = {job.out_name: job for job in plan.jobs}
    assert not inputs_unchanged(jobs[EMBED], plan, sources)
    assert inputs_unchanged(jobs["model.norm.weight"], plan, sources)
    for s in sources.values():
        s.close()
    want = _computed(recipe)
    base_embed = weights(family["base"])[EMBED]
    assert not torch.equal(_bits(want[EMBED]), _bits(base_embed))  # the merge changed the embedding
    on_disk = merge_to_disk(recipe, tmp_path / "out", MergeOptions(progress=False)).out
    assert _differing(weights(on_disk), want) == []


def test_methods_that_copy_are_the_task_vector_family():
    family = {n for n in METHODS.names() if METHODS.get(n).kernel.__qualname__.startswith("_make_kernel.")}
    assert BASE_PLUS_TASK_VECTORS == family


@pytest.mark.parametrize("method", ["linear", "slerp", "model_stock"])
def test_other_methods_always_compute(method, family):
    refs = [str(family[m]) for m in ("base", "a", "b")]
    data = {"merge_method": method, "models": [{"model": r, "parameters": {"weight": 0.5}} for r in refs]}
    if method != "linear":
        data = {"merge_method": method, "base_model": refs[0], "models": [{"model": r} for r in refs[: 2 if method == "slerp" else 3]],
                "parameters": {"t": 0.3} if method == "slerp" else {}}
    recipe = Recipe.from_dict(data)
    sources = _open(recipe)
    plan = plan_merge(recipe, sources)
    assert not any(inputs_unchanged(job, plan, sources) for job in plan.jobs)
    for s in sources.values():
        s.close()


def test_non_finite_unchanged_tensor_fails_as_the_kernel_does(family, tmp_path):
    def poison(t: dict) -> dict:
        t["model.norm.weight"][0] = float("inf")
        return t
    root = tmp_path / "poisoned"
    base = copy_model(family["base"], root / "base", poison)
    a = copy_model(base, root / "a", _finetune(1, CHANGED[0]))
    recipe = Recipe.from_dict({"merge_method": "task_arithmetic", "base_model": str(base),
                               "models": [{"model": str(a), "parameters": {"weight": 0.5}}]})
    messages = []
    for copy in (True, False):
        sources = _open(recipe)
        plan = plan_merge(recipe, sources)
        with pytest.raises(MergeError, match="model.norm.weight: merged tensor contains NaN/Inf") as e:
            for _ in iter_merged(plan, sources, copy_unchanged=copy):
                pass
        messages.append(str(e.value))
        for s in sources.values():
            s.close()
    assert messages[0] == messages[1]


def test_unchanged_tensor_is_written_once_across_candidates(family):
    """In memory, an unchanged tensor that is the base's own (no -0.0 turned into +0.0) is copied into the
    module once; later candidates leave it (its version counter stays, so an engine that swaps only edited
    tensors skips it), and it is written again after anything else wrote to it. Every apply's result is bit
    for bit the computed merge."""
    merger = InMemoryMerger(AutoModelForCausalLM.from_pretrained(family["base"]), {str(p): p for p in family.values()})
    target = merger.module.get_parameter(EMBED)
    other = merger.module.get_parameter(f"model.layers.0.{CHANGED[0]}.weight")
    versions = []
    for step, sign in enumerate([-1.0, -1.0, 1.0, -1.0, -1.0, -1.0]):
        if step == 5:
            with torch.no_grad():
                target.add_(1.0)  # someone else wrote to it: the next apply must write it again
        recipe = _recipe("task_arithmetic", family, sign)  # -: the base's own tensor; +: -0.0 made +0.0, a copy
        before = (target._version, other._version)
        merger.apply(recipe)
        versions.append((target._version != before[0], other._version != before[1]))
        want = _computed(recipe)
        assert _differing({n: t for n, t in _state(merger.module).items() if n in want}, want) == [], step
    # written: first time; kept; +0.0 copy (not the base's tensor); base again; kept; rewritten after the edit
    assert [w for w, _ in versions] == [True, False, True, True, False, True]
    assert all(changed for _, changed in versions)
