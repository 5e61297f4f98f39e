"""The VLM stage's search: the seed's EvoVLM-JP parameter-space merge in miniature.

The seed merged the language model of LLaVA-1.6-Mistral (Mistral, tuned while LLaVA learned to see) with a
Japanese Mistral (Shisa Gamma) inside the LLaVA, vision tower and projector fixed, by DARE-TIES with per-layer
weights and densities that CMA-ES chose on Japanese VQA. Here the two language models are the LLaVA's own (the
base plus the LoRA it learned with the vision side, :mod:`tsugiki.demo.vlm.models`) and the JA sibling; the
fitness is ``rougeL_ja`` of greedy answers on Japanese questions about the fitness scenes (drawn apart from
the test scenes: :func:`tsugiki.demo.vlm.scenes.ja_items`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from tsugiki.benchmarks.jsonl import write_jsonl
from tsugiki.demo.vlm import scenes
from tsugiki.demo.vlm.models import JA_TEMPLATE
from tsugiki.evolution.data import Pair
from tsugiki.vlm.generate import GenerationSettings

# Greedy and no repetition penalty (the seed: 5 beams, penalty 1.5, on 7B models and long answers); the
# answers are one or two words, cut at the first newline.
GENERATION = GenerationSettings(num_beams=1, repetition_penalty=1.0, max_new_tokens=8, do_sample=False)
BATCH = 40  # questions per generate call: one call per candidate (a batch of 16 took 12 % longer for 48 questions)
FITNESS_ARGS = {"template": JA_TEMPLATE, "max_new_tokens": GENERATION.max_new_tokens, "num_beams": 1,
                "repetition_penalty": 1.0, "batch_size": BATCH, "stop": ["\n"]}


@dataclass(frozen=True)
class VlmBudget:
    """How much the stage scores and searches. Scenes give two questions each (colour, shape)."""

    en_eval_scenes: int  # held-out English scenes: does the LLaVA see colour and shape?
    test_scenes: int  # Japanese test scenes (ja_items("test"): 108 in all)
    fitness_scenes: int  # Japanese fitness scenes the search scores every candidate on (144 in all)
    validation_scenes: int  # each generation's best is scored on these too (108 in all)
    population: int
    generations: int
    seeds: tuple[int, ...]
    layer_groups: int = 3  # weight and density per model for each of this many runs of layers


QUICK = VlmBudget(en_eval_scenes=4, test_scenes=4, fitness_scenes=2, validation_scenes=1, population=2,
                  generations=1, seeds=(0,), layer_groups=1)
# A candidate costs ~3 s on 2 cores (merge 0.6 s, 40 greedy answers 2.5 s): 24 candidates per seed, ~80 s.
DEFAULT = VlmBudget(en_eval_scenes=40, test_scenes=108, fitness_scenes=20, validation_scenes=12, population=8,
                    generations=3, seeds=(0, 1, 2))

# The baseline merge: both language models' task vectors at weight 1 (task arithmetic's default), no search.
BASELINES: dict[str, dict[str, Any]] = {
    "LLaVA LM + JA (task arithmetic)": {"merge_method": "task_arithmetic", "base_model": "base", "models": [
        {"model": "llava", "parameters": {"weight": 1.0}}, {"model": "ja", "parameters": {"weight": 1.0}}]},
}


def write_data(out: Path, budget: VlmBudget) -> dict[str, Path]:
    """The fitness and validation questions as JSONL files (``{id, question, answer, image}``, the scene
    pictures as PNG files beside them) for the evolve configs."""
    def write(split: str, n: int) -> Path:
        return write_items(out / f"{split}.jsonl", scenes.ja_items(split, n))

    return {"fitness": write("fitness", budget.fitness_scenes), "validation": write("validation", budget.validation_scenes)}


def write_items(path: Path, items: Sequence[Pair]) -> Path:
    """Scene questions as JSONL with each picture saved once (``images/<scene>.png``, relative to the file)."""
    rows = []
    for p in items:
        image = Path("images") / (p.id.rsplit("/", 1)[0].replace("/", "-") + ".png")
        if not (path.parent / image).exists():
            (path.parent / image).parent.mkdir(parents=True, exist_ok=True)
            p.image.save(path.parent / image)
        rows.append({"id": p.id, "question": p.prompt, "answer": p.answer, "image": image.as_posix()})
    return write_jsonl(path, rows)


def ps_config(sources: dict[str, str], data: dict[str, Path], seed: int, budget: VlmBudget) -> dict[str, Any]:
    """DARE-TIES weight and density per language model and layer group, inside the LLaVA (the seed's PS for
    EvoVLM-JP); ``sources``: ``llava`` (the LLaVA dir), ``ja`` (the JA sibling), ``base`` (the base LM)."""
    return {"name": f"vlm-ps-s{seed}", "sources": sources,
            "space": {"kind": "ps", "method": "dare_ties", "base_model": "base", "models": ["llava", "ja"],
                      "layer_groups": budget.layer_groups, "merge_seed": 0,
                      "params": {"weight": {"bounds": [0.0, 1.5], "init": 0.75},
                                 "density": {"bounds": [0.1, 1.0], "init": 0.6}}},
            "fitness": {"function": "rougeL_ja", "args": FITNESS_ARGS,
                        "data": {"file": str(Path(data["fitness"]).resolve())}},
            "validation": {"data": {"file": str(Path(data["validation"]).resolve())}},
            "search": {"seed": seed, "population": budget.population, "sigma": 0.5, "generations": budget.generations,
                       "workers": 1, "threads": 2}}
