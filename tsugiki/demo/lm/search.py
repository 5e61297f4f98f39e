"""The LM stage's setup: budgets, the baselines' recipes, the data files the searches and the
evaluation read, and the evolve configs of the PS, DFS and PS+DFS searches (run by
:func:`tsugiki.evolution.runner.evolve_and_export`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsugiki.benchmarks.jsonl import write_jsonl
from tsugiki.demo.lm import word_problems as wp

HEADLINE = "acc_ja"
JA_TEMPLATE = wp.JA_PROMPT.replace("{q}", "{input}")
EN_TEMPLATE = wp.EN_PROMPT.replace("{q}", "{input}")
MAX_NEW_TOKENS = 32  # a worked answer is at most 30 tokens (two-digit numbers)
# The seed's fitness: MGSM-style accuracy of greedy answers, counted only when they are Japanese (acc_ja),
# on the fitness split (numbers and wording disjoint from the held-out test).
FITNESS_ARGS = {"extraction": "sakana", "template": JA_TEMPLATE, "stop": ["\n"], "max_new_tokens": MAX_NEW_TOKENS,
                "batch_size": 12, "metric": "acc_ja"}


@dataclass(frozen=True)
class LMBudget:
    fitness_n: int
    validation_n: int
    test_n: int
    population: int
    generations: int
    seeds: tuple[int, ...]
    dfs_generations: int = 0  # 0: same as generations
    workers: int = 1  # candidate evaluations in parallel processes (same results as serial)
    eval_batch: int = 25
    fitness: str = "generated"  # or "teacher_forced" (see FITNESS_KINDS)
    spaces: tuple[str, ...] = ("PS", "DFS", "PS+DFS")  # which searches to run (PS+DFS needs PS)
    engine: str = "hf"  # scores PS candidates and the held-out evaluation (tsugiki.engines); DFS paths run on hf
    dfs_fitness: str = "generated"  # DFS and PS+DFS: "generated" (as PS) or "loglik" (see DFS_FITNESS_KINDS)
    # PS: each candidate scored on this many of the fitness items and its full-set score estimated
    # (fitness.estimate: method, full-set checks of every generation's best); 0: every item
    estimate_items: int = 0
    estimate_method: str = "anchors"

    def __post_init__(self):
        if not set(self.spaces) <= {"PS", "DFS", "PS+DFS"} or ("PS+DFS" in self.spaces and "PS" not in self.spaces):
            raise ValueError(f"spaces: a subset of PS, DFS, PS+DFS (PS+DFS needs PS), not {self.spaces}")


# The default run: three search seeds of PS, each 32 candidates scored on 100 fitness problems, and 300 held-out
# problems. A candidate costs ~6 s on vLLM (merge 0.7 s, swap 0.15 s, ~32 greedy decoding steps for the batch:
# ~2.4 s whatever the number of problems, +0.03 s per problem), so fewer problems buy few more candidates; 40
# candidates per seed took the demo past 25 minutes (1540 s). DFS and PS+DFS (hf engine: paths are not models
# vLLM holds) run with --dfs, scored by the worked answer's log-likelihood: generated acc_ja scored every path 0.
FULL = LMBudget(fitness_n=100, validation_n=12, test_n=300, population=8, generations=4, dfs_generations=2,
                seeds=(0, 1, 2), eval_batch=50, spaces=("PS",), dfs_fitness="loglik")
QUICK = LMBudget(fitness_n=2, validation_n=2, test_n=4, population=2, generations=1, seeds=(0,), eval_batch=4)

# Baselines at the settings their papers / mergekit's docs use by default (weights 1, density 0.5).
BASELINES: dict[str, dict[str, Any]] = {
    "uniform average": {"merge_method": "linear", "models": [
        {"model": "ja", "parameters": {"weight": 1.0}}, {"model": "math", "parameters": {"weight": 1.0}}]},
    "task arithmetic": {"merge_method": "task_arithmetic", "base_model": "base", "models": [
        {"model": "ja", "parameters": {"weight": 1.0}}, {"model": "math", "parameters": {"weight": 1.0}}]},
    "TIES": {"merge_method": "ties", "base_model": "base", "models": [
        {"model": "ja", "parameters": {"weight": 1.0, "density": 0.5}},
        {"model": "math", "parameters": {"weight": 1.0, "density": 0.5}}]},
    "DARE-TIES": {"merge_method": "dare_ties", "base_model": "base", "models": [
        {"model": "ja", "parameters": {"weight": 1.0, "density": 0.5}},
        {"model": "math", "parameters": {"weight": 1.0, "density": 0.5}}], "seed": 0},
}


# Teacher-forced fitness (a design measured against the seed's): exact match of the whole answer and EOS in
# the format merges that solve both steps in Japanese write (word_problems.Problem.mixed_answer), plus 0.1 x
# the mean answer-token probability to break ties; one forward pass instead of a generation, so the same
# time buys 4x the fitness problems.
TF_ARGS = {"append_eos": True, "prob_weight": 0.1, "batch_size": 48}
TF_SCALE = 4
FITNESS_KINDS = ("generated", "teacher_forced")
# DFS and PS+DFS with a continuous fitness (a design measured against the generated one, on which every DFS
# path scored 0): the mean log-probability of the worked Japanese answer and EOS, teacher-forced, on the
# fitness problems.
LL_ARGS = {"append_eos": True, "batch_size": 48}
DFS_FITNESS_KINDS = ("generated", "loglik")


# ----------------------------------------------------------------------------- data files
def write_data(out: Path, budget: LMBudget) -> dict[str, Path]:
    """Fitness, validation and held-out test problems (``{id, question, answer}``; the test items also carry
    the same numbers as an English word problem), as JSONL files the evolve configs and the evaluation read."""
    def items(split: str, n: int) -> list[dict]:
        return [{"id": p.id, "question": p.prompt, "answer": p.answer} for p in wp.target_items(split, n)]

    test = [{**t, "en_question": wp.en_question(wp.problem_of(t["id"]), _en_rng(t["id"]))}
            for t in items("test", budget.test_n)]
    files = {"fitness": write_jsonl(out / "fitness.jsonl", items("fitness", budget.fitness_n)),
             "validation": write_jsonl(out / "validation.jsonl", items("validation", budget.validation_n)),
             "test": write_jsonl(out / "test.jsonl", test)}
    def forced(split: str, n: int) -> list[dict]:
        return [{"id": p.id, "prompt": wp.JA_PROMPT.format(q=p.prompt), "answer": wp.problem_of(p.id).mixed_answer()}
                for p in wp.target_items(split, n)]

    if budget.fitness == "teacher_forced":
        files["fitness"] = write_jsonl(out / "fitness_tf.jsonl", forced("fitness", TF_SCALE * budget.fitness_n))
        files["validation"] = write_jsonl(out / "validation_tf.jsonl", forced("validation", TF_SCALE * budget.validation_n))
    if budget.dfs_fitness == "loglik":
        files["dfs_fitness"] = write_jsonl(out / "fitness_ll.jsonl", forced("fitness", budget.fitness_n))
        files["dfs_validation"] = write_jsonl(out / "validation_ll.jsonl", forced("validation", budget.validation_n))
    return files


def _en_rng(item_id: str):
    import random

    return random.Random(f"en/{item_id}")


# ----------------------------------------------------------------------------- search configs
def _common(data: dict[str, Path], seed: int, budget: LMBudget, generations: int, *, dfs: bool = False) -> dict[str, Any]:
    if budget.fitness not in FITNESS_KINDS:
        raise ValueError(f"fitness must be one of {FITNESS_KINDS}, not {budget.fitness!r}")
    if budget.dfs_fitness not in DFS_FITNESS_KINDS:
        raise ValueError(f"dfs_fitness must be one of {DFS_FITNESS_KINDS}, not {budget.dfs_fitness!r}")
    function, args = (("mgsm_accuracy", FITNESS_ARGS) if budget.fitness == "generated" else
                      ("teacher_forced_accuracy", TF_ARGS))
    if dfs and budget.dfs_fitness == "loglik":
        function, args = "answer_loglik", LL_ARGS
        data = {**data, "fitness": data["dfs_fitness"], "validation": data["dfs_validation"]}
    estimate = ({"estimate": {"method": budget.estimate_method, "items": budget.estimate_items}}
                if budget.estimate_items and not dfs else {})
    return {
        # absolute: a relative path (a perf script's relative work dir) would be resolved again against the
        # config's own folder
        "fitness": {"function": function, "args": args, "data": {"file": str(Path(data["fitness"]).resolve())},
                    **estimate},
        "validation": {"data": {"file": str(Path(data["validation"]).resolve())}},
        "search": {"seed": seed, "population": budget.population, "sigma": 0.5, "generations": generations,
                   "workers": budget.workers, "threads": 2},
    }


def ps_config(sources: dict[str, str], data: dict[str, Path], seed: int, budget: LMBudget) -> dict[str, Any]:
    """DARE-TIES weight and density per model and layer group (the seed's PS); scored with the budget's engine
    (a config for ``hf`` has no ``engine:``, as before the engines, so earlier run dirs still resume)."""
    engine = {} if budget.engine == "hf" else {"engine": {"name": budget.engine, "max_model_len": ENGINE_MAX_LEN}}
    return {"name": f"lm-ps-s{seed}", "sources": sources,
            "space": {"kind": "ps", "method": "dare_ties", "base_model": "base", "models": ["ja", "math"],
                      "layer_groups": 3, "merge_seed": 0,
                      "params": {"weight": {"bounds": [0.0, 1.5], "init": 0.75},
                                 "density": {"bounds": [0.1, 1.0], "init": 0.6}}},
            **_common(data, seed, budget, budget.generations), **engine}


# vLLM's context per sequence in the demo: the word problems' prompts and answers are a few hundred tokens, and
# MGSM-JA's CoT prompt plus 256 new tokens fits too (vLLM would otherwise reserve for Gemma's 32k)
ENGINE_MAX_LEN = 2048


def _dfs_space(models: list[str]) -> dict[str, Any]:
    # r = 1: a path of up to 2 x 18 layers; the seed's r = 3 would triple the longest path's cost here.
    return {"models": models, "repeats": 1, "scale_bounds": [0.5, 1.5],
            "fixed_ends": {"model": models[0], "first": 1, "last": 1}, "init_model": models[0]}


def dfs_config(sources: dict[str, str], data: dict[str, Path], seed: int, budget: LMBudget) -> dict[str, Any]:
    """Which layer of which sibling runs at each step of the path, with the scaling matrix W."""
    return {"name": f"lm-dfs-s{seed}", "sources": sources, "space": {"kind": "dfs", **_dfs_space(["ja", "math"])},
            **_common(data, seed, budget, budget.dfs_generations or budget.generations, dfs=True)}


def ps_dfs_config(sources: dict[str, str], data: dict[str, Path], seed: int, budget: LMBudget,
                  ps_model: Path) -> dict[str, Any]:
    """DFS over the PS-evolved model (the dir the PS search exported, which holds the weights it scored bit
    for bit) and the math sibling: the seed's PS+DFS. (The ``ps_dfs`` space kind would merge the PS recipe
    once more into its run dir: another GB per search seed.)"""
    return {"name": f"lm-ps-dfs-s{seed}", "sources": {**sources, "ps": str(Path(ps_model).resolve())},
            "space": {"kind": "dfs", **_dfs_space(["ps", "math"])},
            **_common(data, seed, budget, budget.dfs_generations or budget.generations, dfs=True)}
