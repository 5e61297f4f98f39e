"""lm-evaluation-harness tasks as tsugiki benchmarks and fitness, scored by tsugiki's engines.

A benchmark named ``lm-eval:TASK`` is a task of lm-eval's registry, or of the task YAMLs in an include folder
(``--lm-eval-include DIR``; a YAML's ``dataset_kwargs.data_files`` are read as lm-eval reads them: relative
to the working folder, so local tasks name absolute paths). lm-eval's own code builds the requests and
computes the metrics (the PyPI package ``lm-eval`` 0.4.x, ``pip install 'tsugiki[lm-eval]'``); tsugiki only
answers them, through :class:`~tsugiki.engines.Engine` wrapped as an lm-eval model (:func:`engine_lm`), so
``hf`` and ``vllm`` both serve, and an evolution scores its in-memory candidate with the engine it already has.

The wrapper tokenizes as lm-eval's ``hf`` model does by default (the tokenizer's own special tokens; a
context and its continuation encoded together and split, trailing spaces moved to the continuation; left
truncation to the model's length) and answers greedily: a task that asks for sampling is refused. Results
keep lm-eval's numbers and names: a score is named as lm-eval reports it (``acc``; ``exact_match,strict-match``
where the filter is not ``none``), on lm-eval's scale (fractions), with a 95 % interval of 1.96 of its
standard error.
"""

from __future__ import annotations

import contextlib
import functools
import math
from datetime import datetime, timezone
from typing import Any, Sequence

from tsugiki.benchmarks.results import BenchmarkResult
from tsugiki.benchmarks.stats import Estimate
from tsugiki.engines import Engine
from tsugiki.errors import BenchmarkError
from tsugiki.registry import did_you_mean

PREFIX = "lm-eval:"
INSTALL = "pip install 'tsugiki[lm-eval]'"
_DEFAULT_MAX_LENGTH = 2048  # lm-eval's hf model's default where neither config nor tokenizer says
_HUGE = 10**20  # transformers' "no limit" model_max_length


def is_task(name: str) -> bool:
    return name.startswith(PREFIX)


def task_name(benchmark: str) -> str:
    """``lm-eval:arc_easy`` -> ``arc_easy`` (refused when nothing follows the prefix)."""
    name = benchmark[len(PREFIX):] if is_task(benchmark) else benchmark
    if not name:
        raise BenchmarkError(f"{benchmark!r}: name an lm-eval task after {PREFIX!r} (lm-eval:arc_easy)")
    return name


def require() -> Any:
    """The ``lm_eval`` package, or a one-line error saying how to install it."""
    try:
        import lm_eval
    except ImportError:
        raise BenchmarkError(f"lm-eval tasks need the lm-eval package: {INSTALL}") from None
    return lm_eval


@functools.lru_cache(maxsize=4)
def task_manager(include_path: str | None = None) -> Any:
    """lm-eval's task index (its registry plus ``include_path``'s YAMLs), built once per include path."""
    require()
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path)


def check_tasks(tasks: Sequence[str], include_path: str | None = None) -> None:
    """Refuse unknown task names in one line, with lm-eval's nearest names, before any model loads."""
    known = task_manager(include_path).all_tasks
    for name in tasks:
        if name not in known:
            hint = did_you_mean(name, known, n=3, quoted=False)
            where = f" or in {include_path}" if include_path else " (local YAMLs: --lm-eval-include DIR)"
            raise BenchmarkError(f"lm-eval has no task {name!r} in its registry{where}{hint}")


# ------------------------------------------------------------------------------------ the model wrapper
def engine_lm(engine: Engine, *, batch_size: int = 8, max_length: int | None = None) -> Any:
    """``engine`` as an lm-eval model (an ``lm_eval.api.model.TemplateLM``)."""
    return _lm_class()(engine, batch_size=batch_size, max_length=max_length)


@functools.lru_cache(maxsize=1)
def _lm_class() -> type:
    require()
    from lm_eval import utils
    from lm_eval.api.model import TemplateLM
    from lm_eval.models.utils import handle_stop_sequences

    class EngineLM(TemplateLM):
        def __init__(self, engine: Engine, *, batch_size: int, max_length: int | None):
            super().__init__()
            self.engine, self.batch_size = engine, batch_size
            self.tokenizer = engine.tokenizer
            self.max_length = max_length or _max_length(engine)

        @property
        def eot_token_id(self) -> int:
            return self.tokenizer.eos_token_id

        @property
        def prefix_token_id(self) -> int:
            bos = self.tokenizer.bos_token_id
            return bos if bos is not None else self.tokenizer.eos_token_id

        @property
        def tokenizer_name(self) -> str:
            return str(getattr(self.tokenizer, "name_or_path", "")).replace("/", "__")

        def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                       **kwargs: Any) -> list[int]:
            options = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
            bos = self.tokenizer.bos_token
            if add_special_tokens is None and bos and string.startswith(bos):
                options = {"add_special_tokens": False}  # the text brings its own BOS
            ids = self.tokenizer.encode(string, **options)
            return ids[-left_truncate_len:] if left_truncate_len else ids

        def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
            seqs, starts = [], []
            for _, context, continuation in requests:
                seq = (list(context) + list(continuation))[-(self.max_length + 1):]
                seqs.append(seq)
                starts.append(len(seq) - len(continuation))
            scored = self.engine.sequence_logprobs(seqs, starts, batch_size=self.batch_size) if seqs else []
            out = [(float(lp.sum()), bool(hit.all())) for lp, hit in scored]  # float32, as lm-eval sums
            for (key, _, _), res in zip(requests, out):
                if key is not None:
                    self.cache_hook.add_partial("loglikelihood", key, res)
            return out

        def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
            out = []
            for (text,) in (r.args for r in requests):
                windows = [utils.make_disjoint_window(w) for w in utils.get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                    context_len=1)]
                scored = self._loglikelihood_tokens([(None, ctx, cont) for ctx, cont in windows])
                out.append(sum(lp for lp, _ in scored))
            return out

        def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
            eos = self.tokenizer.decode([self.eot_token_id], skip_special_tokens=False)
            groups: dict[tuple, list[int]] = {}
            asks = []
            for i, r in enumerate(requests):
                context, kwargs = r.args
                kwargs = dict(kwargs or {})
                if kwargs.get("do_sample") or float(kwargs.get("temperature") or 0.0) > 0.0:
                    raise BenchmarkError(f"task {r.task_name!r} asks for sampling ({kwargs}); tsugiki's engines "
                                         f"generate greedily")
                until = tuple(handle_stop_sequences(kwargs.get("until"), eos=eos))
                max_new = int(kwargs.get("max_gen_toks") or 256)
                asks.append(context)
                groups.setdefault((until, max_new), []).append(i)
            out: list[str] = [""] * len(requests)
            for (until, max_new), rows in groups.items():
                for i in rows:
                    if (n := len(self.tok_encode(asks[i]))) + max_new > self.max_length:
                        raise BenchmarkError(f"task {requests[i].task_name!r}: a prompt of {n} tokens and {max_new} "
                                             f"new ones exceed the model's {self.max_length}")
                texts = self.engine.generate([asks[i] for i in rows], stop=list(until), max_new_tokens=max_new,
                                             batch_size=self.batch_size)
                for i, text in zip(rows, texts):
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
            return out

    return EngineLM


def _max_length(engine: Engine) -> int:
    """The model's context length as lm-eval's hf model finds it: its config, else the tokenizer's, else 2048."""
    config = getattr(getattr(engine, "model", None), "config", None)
    config = getattr(config, "text_config", None) or config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        if isinstance(getattr(config, attr, None), int):
            return getattr(config, attr)
    limit = getattr(engine.tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and limit < _HUGE else _DEFAULT_MAX_LENGTH


# ------------------------------------------------------------------------------------ running tasks
def evaluate_tasks(engine: Engine, tasks: Sequence[str], *, include_path: str | None = None,
                   num_fewshot: int | None = None, limit: int | None = None, samples: dict[str, list[int]] | None = None,
                   batch_size: int = 8, verbose: bool = False) -> dict:
    """lm-eval's ``simple_evaluate`` of ``tasks`` with ``engine`` answering; its results dict, per-sample
    records included. ``samples``: only these doc indices per task (lm-eval's own option)."""
    lm_eval = require()
    check_tasks(tasks, include_path)
    kwargs: dict[str, Any] = {"samples": samples} if samples is not None else {"limit": limit}
    with _global_rng_kept(), _no_git_probe():
        try:
            out = lm_eval.simple_evaluate(model=engine_lm(engine, batch_size=batch_size), tasks=list(tasks),
                                          num_fewshot=num_fewshot, task_manager=task_manager(include_path),
                                          log_samples=True, verbosity="INFO" if verbose else "ERROR", **kwargs)
        except OSError as e:  # its data: a hub dataset while offline, a data file that is not there
            raise BenchmarkError(f"lm-eval task {', '.join(tasks)}: {e}") from None
    if out is None:
        raise BenchmarkError("lm-eval returned no results")
    return out


@contextlib.contextmanager
def _no_git_probe():
    """lm-eval runs ``git describe`` in the working folder on every call to record the *user's* repo in its
    results (a subprocess per scored candidate; ``fatal: not a git repository`` on stderr outside a checkout).
    tsugiki records its own versions: the probe is skipped while lm-eval runs."""
    import lm_eval.evaluator as evaluator

    probe = evaluator.get_git_commit_hash
    evaluator.get_git_commit_hash = lambda: None
    try:
        yield
    finally:
        evaluator.get_git_commit_hash = probe


@contextlib.contextmanager
def _global_rng_kept():
    """lm-eval seeds Python's, numpy's and torch's global generators on every call: put them back afterwards,
    so scoring a candidate changes nothing else in the process."""
    import random

    import numpy as np
    import torch

    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])


# ------------------------------------------------------------------------------------ per-document scores
@functools.lru_cache(maxsize=8)
def task_docs(tasks: tuple[str, ...], include_path: str | None = None,
              limit: int | None = None) -> tuple[tuple[str, int, str, str], ...]:
    """``(task, doc index, prompt text, target text)`` of the docs lm-eval scores for ``tasks`` (group tasks
    expanded; the first ``limit`` of each), in lm-eval's order: the items of an lm-eval fitness."""
    require()
    check_tasks(tasks, include_path)
    out = []
    for name, task in _leaf_tasks(tasks, include_path).items():
        for i, doc in enumerate(task.eval_docs):
            if limit is not None and i >= limit:
                break
            target = task.doc_to_target(doc)
            if task.OUTPUT_TYPE == "multiple_choice" and isinstance(target, int):
                target = task.doc_to_choice(doc)[target]
            out.append((name, i, str(task.doc_to_text(doc)), str(target)))
    return tuple(out)


@functools.lru_cache(maxsize=8)
def task_fewshot(tasks: tuple[str, ...], include_path: str | None, num_fewshot: int | None) -> int:
    """The largest number of few-shot examples any of ``tasks`` puts before a doc (``num_fewshot`` overrides)."""
    if num_fewshot is not None:
        return num_fewshot
    return max((task.config.num_fewshot or 0 for task in _leaf_tasks(tasks, include_path).values()), default=0)


def _leaf_tasks(tasks: Sequence[str], include_path: str | None) -> dict[str, Any]:
    """Task name -> lm-eval Task, groups expanded to their tasks."""
    return task_manager(include_path).load(list(tasks))["tasks"]


def doc_scores(engine: Engine, docs: dict[str, list[int]], *, metric: str | None = None, include_path: str | None = None,
               num_fewshot: int | None = None, batch_size: int = 8) -> dict[tuple[str, int], float]:
    """Each listed doc's score (``metric``: a score name as :func:`score_name` gives it, default each task's
    first) from one lm-eval run over just those docs. Refused where the metric is not a mean over docs (a
    corpus-level BLEU, say): per-doc scores would not add up to the task's."""
    out = evaluate_tasks(engine, list(docs), include_path=include_path, num_fewshot=num_fewshot,
                         samples={t: sorted(ids) for t, ids in docs.items()}, batch_size=batch_size)
    scores: dict[tuple[str, int], float] = {}
    for task in docs:
        row = out["results"].get(task, {})
        names = [n for k in row if (n := score_name(k))]
        name = metric or (names[0] if names else None)
        if name not in names:
            raise BenchmarkError(f"lm-eval task {task!r} has no score {name!r} (has {', '.join(names) or 'none'})")
        key, filt = (name, "none") if "," not in name else name.split(",", 1)
        per_doc = {}
        for sample in out["samples"][task]:
            value = sample.get(key)
            if sample.get("filter", "none") != filt:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise BenchmarkError(f"lm-eval task {task!r}: {name} is not a number per doc ({value!r}); "
                                     f"use a metric that averages over docs")
            per_doc[int(sample["doc_id"])] = float(value)
        total = row[key + "," + filt]
        if per_doc and not math.isclose(math.fsum(per_doc.values()) / len(per_doc), total, rel_tol=1e-9, abs_tol=1e-12):
            raise BenchmarkError(f"lm-eval task {task!r}: {name} = {total} is not the mean of its per-doc scores; "
                                 f"use a metric that averages over docs")
        scores.update({(task, i): v for i, v in per_doc.items()})
    return scores


def score_name(key: str) -> str | None:
    """lm-eval's ``metric,filter`` result key as a score name (``acc``, ``exact_match,strict-match``); None for
    the stderr keys and the bookkeeping ones."""
    if "," not in key:
        return None
    metric, _, filt = key.partition(",")
    if metric.endswith("_stderr"):
        return None
    return metric if filt == "none" else key


def to_results(out: dict, model: str, settings: dict | None = None) -> list[BenchmarkResult]:
    """One :class:`BenchmarkResult` per task in lm-eval's results dict (items from its per-sample records)."""
    import lm_eval

    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    results = []
    for task, row in out["results"].items():
        scores = {}
        for key, value in row.items():
            name = score_name(key)
            if name is None or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            metric, _, filt = key.partition(",")
            se = row.get(f"{metric}_stderr,{filt}")
            half = 1.959963984540054 * se if isinstance(se, (int, float)) and math.isfinite(se) else 0.0
            scores[name] = Estimate(float(value), float(value) - half, float(value) + half)
        if not scores:
            continue
        primary = next(iter(scores))
        higher = out.get("higher_is_better", {}).get(task, {}).get(primary.partition(",")[0], True)
        n = out.get("n-samples", {}).get(task, {}).get("effective", row.get("sample_len", 0))
        items = [_item(s) for s in out.get("samples", {}).get(task, [])]
        config = out.get("configs", {}).get(task, {})
        results.append(BenchmarkResult(
            model=model, benchmark=PREFIX + task, title=PREFIX + task, version=str(out.get("versions", {}).get(task)),
            metric="lm-eval", primary=primary, higher_is_better=bool(higher), scores=scores, n=int(n or len(items)),
            settings={"lm_eval": lm_eval.__version__, "num_fewshot": config.get("num_fewshot"),
                      "output_type": config.get("output_type"), **(settings or {})},
            created=created, items=items))
    return results


def _item(sample: dict) -> dict:
    args = sample.get("arguments") or [("",)]
    first = args[0] if isinstance(args, (list, tuple)) and args else ("",)
    out = {"id": sample.get("doc_id"), "question": first[0] if isinstance(first, (list, tuple)) else str(first),
           "reference": _plain(sample.get("target")), "prediction": _plain(sample.get("filtered_resps"))}
    for metric in sample.get("metrics") or []:
        if metric in sample:
            out[metric] = _plain(sample[metric])
    return out


def _plain(value: Any) -> Any:
    """JSON-able: numpy scalars to numbers, tuples to lists."""
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)
