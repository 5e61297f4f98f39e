"""Prompt -> answer pairs for the built-in fitness functions, and the fitness/validation split rule.

A data spec (the ``data:`` of ``fitness`` or ``validation`` in an evolve config) is one of::

    {pairs: [{prompt: "3+4=", answer: "7"}, ...]}                inline
    {file: pairs.jsonl, limit: 100}                            one JSON object per line, same keys
    {generator: arithmetic, split: fitness, n: 40, seed: 0}    built in, offline (see GENERATORS)

Generators enumerate a fixed universe, shuffle it with a fixed seed and cut it into three disjoint
parts: ``fitness`` (first 40%), ``validation`` (next 30%) and ``test`` (last 30%); ``n`` items are then
drawn from the part with ``seed``. ``generator`` may be a list: items alternate between generators.
Whatever the source, :func:`check_disjoint` refuses a validation set that shares a prompt with the
fitness set (the search must never see validation data; Akiba et al. 2024, arXiv:2403.13187, report
held-out scores for the same reason).

The built-in universes mirror the corpora the tiny-model factory fine-tunes its siblings on
(``tsugiki.factory.lm``): Japanese sentence templates, one-digit sums and word copying.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from tsugiki.errors import EvolutionError
from tsugiki.registry import Registry

SPLITS = {"fitness": (0.0, 0.4), "validation": (0.4, 0.7), "test": (0.7, 1.0)}
_UNIVERSE_SEED = 20240320  # fixed: the split of a universe never depends on a run's seed


@dataclass(frozen=True)
class Pair:
    prompt: str
    answer: str


def _arithmetic() -> list[Pair]:
    return [Pair(f"{a}+{b}=", str(a + b)) for a in range(10) for b in range(10)]


_JA_SUBJECTS = ["私", "彼", "先生", "友達", "母", "犬", "猫", "学生"]
_JA_PLACES = ["東京", "大阪", "学校", "駅", "店", "家", "公園", "山"]
_JA_VERBS = ["行きます", "来ました", "歩きます", "帰ります", "走りました"]


def _ja_sentences() -> list[Pair]:
    # one verb per (subject, place), so that every prompt has exactly one answer
    return [Pair(f"{s}は{p}へ", f"{_JA_VERBS[(3 * i + j) % len(_JA_VERBS)]}。")
            for i, s in enumerate(_JA_SUBJECTS) for j, p in enumerate(_JA_PLACES)]


def _copy_words() -> list[Pair]:
    rng = random.Random(7)
    words = sorted({"".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 6))) for _ in range(400)})
    return [Pair(f"copy {w} -> ", w) for w in words]


GENERATORS: Registry[Callable[[], list[Pair]]] = Registry("data generator")
GENERATORS.register("arithmetic", _arithmetic)
GENERATORS.register("ja_sentences", _ja_sentences)
GENERATORS.register("copy", _copy_words)


def split_of(universe: list[Pair], split: str) -> list[Pair]:
    if split not in SPLITS:
        raise EvolutionError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    prompts = sorted({p.prompt for p in universe})  # split by prompt: no prompt is in two parts
    random.Random(_UNIVERSE_SEED).shuffle(prompts)
    lo, hi = SPLITS[split]
    part = set(prompts[round(lo * len(prompts)):round(hi * len(prompts))])
    return [p for p in universe if p.prompt in part]


def generate(names: list[str], split: str, n: int | None, seed: int) -> list[Pair]:
    parts = [split_of(GENERATORS.get(name)(), split) for name in names]
    for part in parts:
        random.Random(seed).shuffle(part)
    out: list[Pair] = []
    k = 0
    while any(parts) and (n is None or len(out) < n):  # round robin over the generators
        part = parts[k % len(parts)]
        if part:
            out.append(part.pop(0))
        k += 1
    return out


def load_pairs(spec: Mapping[str, Any], where: str = "data") -> list[Pair]:
    """Pairs for a validated data spec (file paths already absolute)."""
    if "pairs" in spec:
        return [Pair(str(p["prompt"]), str(p["answer"])) for p in spec["pairs"]]
    if "file" in spec:
        path = Path(spec["file"])
        pairs = []
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise EvolutionError(f"{where}: cannot read {path}: {e}") from None
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                pairs.append(Pair(str(obj["prompt"]), str(obj["answer"])))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise EvolutionError(f"{path}:{i}: expected a JSON object with 'prompt' and 'answer' ({e})") from None
        limit = spec.get("limit")
        return pairs[:limit] if limit is not None else pairs
    names = spec["generator"]
    return generate(names if isinstance(names, list) else [names], spec.get("split", "fitness"), spec.get("n"), spec.get("seed", 0))


def check_disjoint(fitness: list[Pair], other: list[Pair], what: str = "validation") -> None:
    seen = {p.prompt for p in fitness}
    shared = [p for p in other if p.prompt in seen]
    if shared:
        raise EvolutionError(f"{what} data shares {len(shared)} prompt(s) with the fitness data, e.g. {shared[0].prompt!r}; "
                             f"they must be disjoint")
