"""Plan a merge: a recipe plus its sources' tensor metadata → one job per output tensor.

Planning reads no tensor data, only names, shapes and configs, so every structural problem (missing
tensor, shape or architecture mismatch, bad parameter) is reported before anything is computed or
written. Both the streaming executor and the in-memory merger run the same plan.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from tsugiki.errors import MergeError
from tsugiki.merging.architecture import ArchitectureSpec, architecture_for
from tsugiki.merging.methods import get_method
from tsugiki.merging.methods.base import MergeMethod
from tsugiki.merging.recipe import Recipe, resolve_params
from tsugiki.merging.tensors import TensorSource


@dataclass(frozen=True)
class TensorJob:
    out_name: str
    inputs: tuple[tuple[str, str], ...]  # (model ref, tensor name) per source, recipe order
    base_index: int | None
    global_params: dict[str, Any]
    model_params: tuple[dict[str, Any], ...]
    shape: tuple[int, ...]
    in_dtype: torch.dtype
    seed: int | None
    vocabulary: bool = False  # rows are tokens, laid out in the plan's vocabulary first (set only with plan.vocab)


@dataclass(frozen=True)
class MergePlan:
    method: MergeMethod
    jobs: tuple[TensorJob, ...]
    arch: ArchitectureSpec
    num_layers: int
    layer_sources: tuple[tuple[str, int], ...]  # output layer i comes from (model ref, source layer)
    donor: str  # model whose config/tokenizer files the output starts from
    vocab: Any = None  # tsugiki.merging.vocab.Vocabulary where the recipe names a tokenizer

    @property
    def refs(self) -> list[str]:
        seen: dict[str, None] = {}
        for job in self.jobs:
            seen.update(dict.fromkeys(r for r, _ in job.inputs))
        return list(seen)


@dataclass(frozen=True)
class _Source:
    ref: str
    layer_range: tuple[int, int] | None
    params: Mapping[str, Any] | None


def tensor_seed(seed: int, name: str) -> int:
    """Per-tensor RNG seed: independent of execution order, the same on disk and in memory."""
    digest = hashlib.blake2b(f"{seed}\0{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def plan_merge(recipe: Recipe, sources: Mapping[str, TensorSource], *, seed: int | None = None,
               vocab: Any = None) -> MergePlan:
    """One job per output tensor; ``vocab`` (:func:`tsugiki.merging.vocab.recipe_vocabulary`): the output
    vocabulary its vocabulary tensors (embeddings, LM head) are laid out in, rows in any number per source."""
    method = get_method(recipe.merge_method)
    refs = recipe.model_refs()
    missing = [r for r in refs if r not in sources]
    if missing:
        raise MergeError(f"recipe names model {missing[0]!r} but it was not provided")
    donor = recipe.base_model or refs[0]
    names = {r: sources[r].names() for r in refs}
    configs = {r: _config(sources[r]) for r in refs}
    _check_architectures(refs, configs)
    arch = architecture_for(configs[donor], names[donor], sources[donor].label)
    seed = recipe.seed if seed is None else seed
    plan = (_plan_slices if recipe.slices else _plan_models)(recipe, method, arch, sources, names, configs, donor, seed,
                                                              vocab)
    return dataclasses.replace(plan, vocab=vocab) if vocab is not None else plan


def _config(source: TensorSource) -> dict | None:
    get = getattr(source, "config", None)
    return get() if callable(get) else None


def _check_architectures(refs: list[str], configs: dict[str, dict | None]) -> None:
    def describe(cfg: dict | None) -> str:
        if not cfg:
            return "unknown (no config.json)"
        return ", ".join(cfg.get("architectures") or ()) or cfg.get("model_type") or "unknown"

    first = refs[0]
    for r in refs[1:]:
        a, b = configs[first] or {}, configs[r] or {}
        if (a.get("architectures"), a.get("model_type")) != (b.get("architectures"), b.get("model_type")):
            raise MergeError(f"{r}: architecture {describe(configs[r])} differs from {first}'s {describe(configs[first])}")


def _job(recipe: Recipe, method: MergeMethod, sources: Mapping[str, TensorSource], out_name: str,
         inputs: list[tuple[_Source, str]], slice_index: int | None, t: float, seed: int | None,
         vocab: Any = None, arch: ArchitectureSpec | None = None) -> TensorJob:
    first_ref, first_name = inputs[0][0].ref, inputs[0][1]
    info = sources[first_ref].info(first_name)
    tokens = vocab is not None and arch is not None and arch.role_of(out_name) in ("embedding", "lm_head")
    for src, name in inputs[1:]:
        other = sources[src.ref].info(name)
        if other.shape[tokens:] != info.shape[tokens:]:
            raise MergeError(
                f"{out_name}: shape {list(other.shape)} in {src.ref} ({name}) differs from {list(info.shape)} in {first_ref}"
            )
    base = recipe.base_for(slice_index)
    refs = [s.ref for s, _ in inputs]
    base_index = refs.index(base) if base in refs else None
    if method.base == "required" and base_index is None:
        raise MergeError(f"merge method {method.name!r} needs base_model among the sources of {out_name}")
    if len(refs) < method.min_models or (method.max_models is not None and len(refs) > method.max_models):
        bound = f"exactly {method.min_models}" if method.min_models == method.max_models else f"at least {method.min_models}"
        raise MergeError(f"merge method {method.name!r} takes {bound} models ({len(refs)} given for {out_name})")
    problem = method.non_base_error(len(refs) - (method.base != "ignored" and base_index is not None))
    if problem:
        raise MergeError(f"{out_name}: {problem}")
    global_params, model_params = resolve_params(
        method, recipe, slice_index, out_name, t, refs, input_names=[name for _, name in inputs],
    )
    return TensorJob(
        out_name=out_name,
        inputs=tuple((s.ref, name) for s, name in inputs),
        base_index=base_index,
        global_params=global_params,
        model_params=tuple(model_params),
        shape=(vocab.size, *info.shape[1:]) if tokens else info.shape,
        in_dtype=info.dtype,
        seed=tensor_seed(seed or 0, out_name) if method.randomized else None,
        vocabulary=tokens,
    )


def _plan_models(recipe, method, arch, sources, names, configs, donor, seed, vocab=None) -> MergePlan:
    srcs = [_Source(m.model, None, m.parameters) for m in recipe.models]
    # as mergekit does: an unlisted base model is still an input (methods that ignore a base weight it)
    if recipe.base_model and recipe.base_model not in [s.ref for s in srcs]:
        srcs.append(_Source(recipe.base_model, None, None))
    reference = names[donor]
    for s in srcs:
        have = set(names[s.ref])
        lacking = [n for n in reference if n not in have]
        if lacking:
            raise MergeError(f"{sources[s.ref].label}: tensor {lacking[0]!r} missing (present in {donor})")
        extra = [n for n in names[s.ref] if n not in set(reference)]
        if extra:
            raise MergeError(f"{sources[s.ref].label}: tensor {extra[0]!r} is not in {donor}")
    num_layers = arch.num_layers(configs[donor], reference)
    for s in srcs:
        n = arch.num_layers(configs[s.ref], names[s.ref])
        if n != num_layers:
            raise MergeError(f"{s.ref}: {n} layers, but {donor} has {num_layers}")
    jobs = []
    for name in reference:
        layer = arch.layer_of(name)
        # gradients run over the layers; pre/post weights take the first value (t=0), as mergekit does
        t = (layer[0] / (num_layers - 1) if num_layers > 1 else 1.0) if layer else 0.0
        jobs.append(_job(recipe, method, sources, name, [(s, name) for s in srcs], None, t, seed, vocab, arch))
    return MergePlan(method, tuple(jobs), arch, num_layers, tuple((donor, i) for i in range(num_layers)), donor)


def _plan_slices(recipe, method, arch, sources, names, configs, donor, seed, vocab=None) -> MergePlan:
    slices = [[_Source(s.model, tuple(s.layer_range), s.parameters) for s in sl.sources] for sl in recipe.slices]
    layer_suffixes: dict[tuple[str, int], list[str]] = {}
    for ref in {s.ref for sl in slices for s in sl}:
        for n in names[ref]:
            if (p := arch.layer_of(n)) is not None:
                layer_suffixes.setdefault((ref, p[0]), []).append(p[1])

    def non_layer(ref: str, pre: bool) -> list[str]:
        return [n for n in names[ref] if arch.layer_of(n) is None and arch.is_pre(n) == pre]

    jobs: list[TensorJob] = []
    first, last = slices[0], slices[-1]
    for name in non_layer(first[0].ref, pre=True):
        jobs.append(_job(recipe, method, sources, name, [(s, name) for s in first], 0, 0.0, seed, vocab, arch))
    out_layer = 0
    layer_sources: list[tuple[str, int]] = []
    for k, sl in enumerate(slices):
        length = sl[0].layer_range[1] - sl[0].layer_range[0]
        for idx in range(length):
            t = idx / (length - 1) if length > 1 else 1.0
            src_layers = [s.layer_range[0] + idx for s in sl]
            for s, li in zip(sl, src_layers):
                if (s.ref, li) not in layer_suffixes:
                    raise MergeError(f"{sources[s.ref].label}: has no layer {li} (slice {k}, layer_range {list(s.layer_range)})")
            suffixes = layer_suffixes[(sl[0].ref, src_layers[0])]
            for s, li in zip(sl[1:], src_layers[1:]):
                if sorted(layer_suffixes[(s.ref, li)]) != sorted(suffixes):
                    raise MergeError(f"{s.ref}: layer {li} tensors differ from {sl[0].ref} layer {src_layers[0]}")
            for suffix in suffixes:
                inputs = [(s, arch.layer_name(li, suffix)) for s, li in zip(sl, src_layers)]
                jobs.append(_job(recipe, method, sources, arch.layer_name(out_layer, suffix), inputs, k, t, seed))
            layer_sources.append((sl[0].ref, src_layers[0]))
            out_layer += 1
    for name in non_layer(last[0].ref, pre=False):
        jobs.append(_job(recipe, method, sources, name, [(s, name) for s in last], len(slices) - 1, 0.0, seed, vocab,
                         arch))
    return MergePlan(method, tuple(jobs), arch, out_layer, tuple(layer_sources), donor)
