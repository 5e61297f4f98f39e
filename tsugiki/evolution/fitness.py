"""Fitness functions: a registry of built-ins plus any callable named ``module:function`` or
``path/to/file.py:function``.

Every fitness function has the signature ``fn(ctx: EvalContext, data: list[Pair] | None, **args) ->
float`` and is maximised (higher is better). ``ctx`` carries the decoded parameters, the split being
scored (``fitness`` or ``validation``), a per-candidate seed and, for model spaces, the candidate model
(a Hugging Face causal LM, in eval mode) and its tokenizer. A function that raises, or returns NaN or
a non-number, fails its candidate: it gets the worst fitness and the run goes on.

Built-ins (no benchmark data needed; teacher forcing, as in the toy feasibility runs that tuned
DARE-TIES with CMA-ES after Akiba et al. 2024, arXiv:2403.13187):

- ``teacher_forced_accuracy``: fraction of pairs whose answer tokens are all the greedy next-token
  predictions given the prompt and the answer so far, plus ``prob_weight`` x the mean per-pair answer
  probability (geometric mean over the answer's tokens); ``prob_weight`` breaks ties between candidates
  that solve the same pairs.
- ``answer_loglik``: mean over pairs of the mean log-probability of the answer tokens.
- ``neg_sphere``: ``-sum((x - center)^2)`` over the parameters (no model; checks the optimiser).
- ``weighted_sum``: ``sum(weight * f(ctx, data, **args))`` over ``terms: [{function, weight, args}]``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from tsugiki.errors import EvolutionError
from tsugiki.evolution.data import Pair
from tsugiki.registry import Registry

FitnessFn = Callable[..., float]


@dataclass
class EvalContext:
    params: Mapping[str, float]
    split: str = "fitness"
    seed: int = 0
    model: Any = None
    tokenizer: Any = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class FitnessSpec:
    fn: FitnessFn
    needs_model: bool = True
    doc: str = ""


FITNESS: Registry[FitnessSpec] = Registry("fitness function")


# ------------------------------------------------------------------------------ teacher forcing
def _batches(pairs: Sequence[Pair], size: int):
    for i in range(0, len(pairs), size):
        yield pairs[i:i + size]


@torch.no_grad()
def answer_token_logprobs(model, tokenizer, pairs: Sequence[Pair], *, batch_size: int = 64,
                          append_eos: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per pair: (log-probabilities of the answer tokens, whether each is the greedy prediction)."""
    if not pairs:
        raise EvolutionError("no data pairs to score")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = []
    for batch in _batches(list(pairs), batch_size):
        seqs, starts = [], []
        for p in batch:
            prompt = tokenizer(p.prompt, add_special_tokens=True)["input_ids"]
            answer = tokenizer(p.answer, add_special_tokens=False)["input_ids"]
            if append_eos and tokenizer.eos_token_id is not None:
                answer = answer + [tokenizer.eos_token_id]
            if not answer:
                raise EvolutionError(f"answer {p.answer!r} has no tokens")
            seqs.append(prompt + answer)
            starts.append(len(prompt))
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
        device = next(model.parameters()).device
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits.float().cpu()
        logp = torch.log_softmax(logits, dim=-1)
        for i, (s, start) in enumerate(zip(seqs, starts)):
            pos = torch.arange(start - 1, len(s) - 1)
            target = ids[i, start:len(s)]
            out.append((logp[i, pos, target], logits[i, pos].argmax(-1) == target))
    return out


def teacher_forced_accuracy(ctx: EvalContext, data: Sequence[Pair], *, prob_weight: float = 0.0,
                            batch_size: int = 64, append_eos: bool = False) -> float:
    scored = answer_token_logprobs(ctx.model, ctx.tokenizer, data, batch_size=batch_size, append_eos=append_eos)
    acc = sum(bool(hit.all()) for _, hit in scored) / len(scored)
    if not prob_weight:
        return acc
    prob = sum(math.exp(float(lp.mean())) for lp, _ in scored) / len(scored)
    return acc + prob_weight * prob


def answer_loglik(ctx: EvalContext, data: Sequence[Pair], *, batch_size: int = 64, append_eos: bool = False) -> float:
    scored = answer_token_logprobs(ctx.model, ctx.tokenizer, data, batch_size=batch_size, append_eos=append_eos)
    return sum(float(lp.mean()) for lp, _ in scored) / len(scored)


def neg_sphere(ctx: EvalContext, data: Any = None, *, center: float | Mapping[str, float] = 0.0) -> float:
    c = center if isinstance(center, Mapping) else {k: center for k in ctx.params}
    return -sum((v - float(c.get(k, 0.0))) ** 2 for k, v in ctx.params.items())


def weighted_sum(ctx: EvalContext, data: Any, *, terms: Sequence[Mapping[str, Any]]) -> float:
    """``sum(weight * function(ctx, data, **args))`` over ``terms: [{function, weight, args}]``."""
    total = 0.0
    for term in terms:
        spec = resolve_fitness(term["function"])
        total += float(term.get("weight", 1.0)) * as_fitness(spec.fn(ctx, data, **dict(term.get("args") or {})))
    return total


FITNESS.register("teacher_forced_accuracy", FitnessSpec(teacher_forced_accuracy, True, "exact match + prob_weight x mean answer probability"))
FITNESS.register("answer_loglik", FitnessSpec(answer_loglik, True, "mean log-probability of the answer tokens"))
FITNESS.register("neg_sphere", FitnessSpec(neg_sphere, False, "-sum((x - center)^2); no model"))
FITNESS.register("weighted_sum", FitnessSpec(weighted_sum, True, "weighted sum of other fitness functions"))


# ------------------------------------------------------------------------------ lookup
def resolve_fitness(name: str) -> FitnessSpec:
    """A registered name, ``package.module:function`` or ``/abs/path/file.py:function``."""
    if ":" not in name:
        return FITNESS.get(name)
    target, _, attr = name.rpartition(":")
    if target.endswith(".py"):
        path = Path(target)
        mod_name = "tsugiki_fitness_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
        module = sys.modules.get(mod_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(mod_name, path)
            if spec is None or spec.loader is None or not path.is_file():
                raise EvolutionError(f"fitness function {name!r}: no file {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise EvolutionError(f"fitness function {name!r}: cannot import {target!r} ({e})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise EvolutionError(f"fitness function {name!r}: {target!r} has no callable {attr!r}")
    return FitnessSpec(fn, needs_model=getattr(fn, "needs_model", True), doc=(fn.__doc__ or "").strip())


def as_fitness(value: Any) -> float:
    """A fitness function's return value as a finite float; raises ValueError otherwise."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"fitness function returned {type(value).__name__}, not a number")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"fitness is {value}")
    return value
