"""`tsugiki score`, `tsugiki eval`, `tsugiki report`: Japanese benchmarks outside pytest.

``score`` has one sub-verb per metric (``rouge-ja``, ``mgsm``). More come from functions
``add(score_subparsers)`` listed in ``SCORE_VERBS`` or passed as ``register(sub, score_verbs=[...])``;
``register`` also returns the ``score`` sub-parsers. Each sub-verb sets ``func`` like any verb.
``eval`` has one sub-verb, ``t2i`` (``EVAL_VERBS``), beside its list of benchmarks
(see :class:`tsugiki.commands.verbs.VerbParser`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from tsugiki.benchmarks.mgsm import EXTRACTIONS
from tsugiki.commands import images
from tsugiki.commands.verbs import Verb, VerbParser
from tsugiki.engines import engine_names
from tsugiki.merging.recipe_schema import FLOAT_DTYPES

SUMMARY_FILES = ("leaderboard.md", "leaderboard.html")


# --------------------------------------------------------------------------- score


def _pairs(path: str, keys: tuple[str, str]) -> tuple[list, list]:
    from tsugiki.benchmarks.jsonl import read_jsonl
    from tsugiki.errors import BenchmarkError

    first, second = [], []
    for lineno, row in read_jsonl(path):
        missing = [k for k in keys if k not in row]
        if missing:
            raise BenchmarkError(f"{path}:{lineno}: missing {', '.join(map(repr, missing))} (each line needs {keys})")
        first.append(row[keys[0]])
        second.append(row[keys[1]])
        for k in keys:
            if row[k] is None:
                raise BenchmarkError(f"{path}:{lineno}: {k!r} is null")
    if not first:
        raise BenchmarkError(f"{path}: no pairs")
    return first, second


def _flat(scores: dict) -> dict:
    out = {}
    for name, est in scores.items():
        out |= {name: est.value, f"{name}_low": est.low, f"{name}_high": est.high}
    return out


def _print_json(obj: dict) -> None:
    print(json.dumps(obj, ensure_ascii=False, indent=2))


def cmd_score_rouge(args: argparse.Namespace) -> int:
    from tsugiki.benchmarks.rouge import rouge_ja
    from tsugiki.errors import BenchmarkError

    predictions, references = _pairs(args.pairs, ("prediction", "reference"))
    for i, (p, r) in enumerate(zip(predictions, references), 1):
        if not isinstance(p, str) or not isinstance(r, str):
            raise BenchmarkError(f"{args.pairs}: pair {i}: prediction and reference must be text")
    res = rouge_ja(references, predictions, language_filter=not args.no_language_filter)
    keys = ("rougeL", "rougeL_ja")
    out = {"n": len(predictions)} | _flat({k: res.scores[k] for k in keys if k in res.scores})
    if args.per_item:
        out["per_item"] = [{k: item[k] for k in (*keys, "ja_reference", "ja_prediction") if k in item}
                           for item in res.per_item]
    _print_json(out)
    return 0


def cmd_score_mgsm(args: argparse.Namespace) -> int:
    from tsugiki.benchmarks.mgsm import score_mgsm

    responses, answers = _pairs(args.pairs, ("response", "answer"))
    res = score_mgsm(responses, answers, extraction=args.extraction, language_filter=not args.no_language_filter)
    out = {"n": len(responses), "extraction": args.extraction} | _flat(res.scores)
    if args.per_item:
        out["per_item"] = [{k: item[k] for k in ("extracted", "correct", "correct_ja") if k in item}
                           for item in res.per_item]
    _print_json(out)
    return 0


def _add_score_verbs(score_sub: argparse._SubParsersAction) -> None:
    r = score_sub.add_parser("rouge-ja", help="Japanese ROUGE-L of prediction/reference pairs",
                             description="Score JSONL lines {\"prediction\": ..., \"reference\": ...} (other keys are "
                                         "ignored) with MeCab-tokenised ROUGE-L; prints rougeL and rougeL_ja (the "
                                         "seed's Japanese-only filter) with 95% bootstrap intervals, x100.")
    r.add_argument("pairs", help="JSONL file of {prediction, reference}")
    r.add_argument("--per-item", action="store_true", help="also list each pair's scores, in input order")
    r.add_argument("--no-language-filter", action="store_true", help="skip fastText (no rougeL_ja)")
    r.set_defaults(func=cmd_score_rouge)

    m = score_sub.add_parser("mgsm", help="MGSM accuracy of response/answer pairs",
                             description="Score JSONL lines {\"response\": ..., \"answer\": ...} (other keys are "
                                         "ignored): extract a number from each response and compare; prints acc and "
                                         "acc_ja (percent) with 95% bootstrap intervals.")
    m.add_argument("pairs", help="JSONL file of {response, answer}")
    m.add_argument("--extraction", choices=EXTRACTIONS, default="robust",
                   help="sakana: the seed's rule, flaws included (reproduces published numbers); "
                        "robust (default): separators, negatives, full-width digits, stated final answers")
    m.add_argument("--per-item", action="store_true", help="also list each response's extracted number and verdict")
    m.add_argument("--no-language-filter", action="store_true", help="skip fastText (no acc_ja)")
    m.set_defaults(func=cmd_score_mgsm)


# --------------------------------------------------------------------------- eval / report


def _write_leaderboard(results, folder: Path, baseline: str | None) -> str:
    from tsugiki.benchmarks import leaderboard
    from tsugiki.errors import OutputWriteError
    from tsugiki.fileio import atomic_write

    lb = leaderboard.build(results, baseline)
    md = leaderboard.to_markdown(lb)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / SUMMARY_FILES[0], md)
        atomic_write(folder / SUMMARY_FILES[1], leaderboard.to_html(lb))
    except OSError as e:
        raise OutputWriteError(f"{folder}: cannot write the leaderboard: {e.filename or folder}: {e.strerror or e}") from None
    return md


def cmd_eval(args: argparse.Namespace) -> int:
    from tsugiki.benchmarks import cases as selection
    from tsugiki.benchmarks.harness import is_task
    from tsugiki.benchmarks.results import write_result
    from tsugiki.benchmarks.specs import BENCHMARKS
    from tsugiki.fileio import check_writable_dir

    if args.list:
        for name in BENCHMARKS.names():
            spec = BENCHMARKS.get(name)
            print(f"{name:16} v{spec.version}  {spec.title} [{spec.metric}: {spec.primary}]  {spec.description}")
        return 0
    check_writable_dir(args.results_dir, "results folder")  # before any model is evaluated
    thresholds = selection.parse_min_scores(args.min_score)
    models, predictions, dataset_dir = list(args.model), list(args.predictions), args.dataset_dir
    gen = selection.GenerationOptions(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                     device=args.device, dtype=args.dtype, threads=args.threads, engine=args.engine)
    with tempfile.TemporaryDirectory(prefix="tsugiki-samples-") as tmp:
        if args.samples:  # the same default run as `pytest benchmarks/` without options
            from tsugiki.benchmarks.samples import write_samples

            samples = write_samples(Path(tmp) / "samples")
            dataset_dir = dataset_dir or samples
            predictions.append(str(samples / "sample-predictions"))
            if args.lm_eval_include is None and any(map(is_task, args.benchmarks)):
                from tsugiki.benchmarks.samples import write_sample_tasks

                args.lm_eval_include = str(write_sample_tasks(Path(tmp) / "lm-eval-tasks"))
            models.append(f"{selection.EMBEDDED_MODEL}={selection.build_embedded_model(tmp)}")
            gen.max_new_tokens = gen.max_new_tokens or 16
            gen.threads = gen.threads or 1
        cases = selection.select_cases(args.benchmarks, models=models, vlm_models=args.vlm_model,
                                       predictions=predictions, dataset_dir=dataset_dir, limit=args.limit,
                                       generation=gen, lm_eval_include=args.lm_eval_include)
        results, failures = [], []
        for case in cases:
            result = case.evaluate(limit=args.limit, extraction=args.extraction, progress=not args.quiet)
            path = write_result(result, args.results_dir)
            est = result.scores[result.primary]
            print(f"{case.model} / {case.benchmark}: {result.primary} = {est.value:.2f} "
                  f"(95% CI {est.low:.2f}–{est.high:.2f}, n={result.n}) → {path}", file=sys.stderr)
            results.append(result)
            failures += selection.check_thresholds(result, thresholds)
    print(_write_leaderboard(results, Path(args.results_dir), args.baseline))
    for f in failures:
        print(f"FAILED {f}", file=sys.stderr)
    return 1 if failures else 0


def cmd_report(args: argparse.Namespace) -> int:
    from tsugiki.benchmarks import leaderboard
    from tsugiki.benchmarks.results import find_results

    lb = leaderboard.build(find_results(args.results), args.baseline)
    md = leaderboard.to_markdown(lb)
    if args.markdown:
        Path(args.markdown).write_text(md, encoding="utf-8")
    if args.html:
        Path(args.html).write_text(leaderboard.to_html(lb), encoding="utf-8")
    print(md, end="")
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


# Adders of `tsugiki score METRIC` verbs, listed explicitly: add e.g. FID's here.
SCORE_VERBS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (_add_score_verbs, images.add_score_fid_parser)
# `tsugiki eval NAME ...`: verbs whose options differ from the benchmarks'
EVAL_VERBS: dict[str, Verb] = {"t2i": images.T2I}


def register(sub: argparse._SubParsersAction,
             score_verbs: Sequence[Callable[[argparse._SubParsersAction], None]] = ()) -> argparse._SubParsersAction:
    """Add ``score``, ``eval`` and ``report``; returns ``score``'s sub-parsers (for more metrics)."""
    s = sub.add_parser("score", help="score pairs generated elsewhere (JSONL) and print JSON",
                       description="Score raw pairs with a benchmark metric; prints one JSON object.")
    score_sub = s.add_subparsers(dest="metric", required=True, metavar="METRIC", help="the metric")
    for add in (*SCORE_VERBS, *score_verbs):
        add(score_sub)

    e = sub.add_parser("eval", help="run Japanese benchmarks (the `pytest benchmarks/` evaluations) with progress bars",
                       description="Evaluate models or prediction files on benchmarks; writes per-item JSONL, "
                                   "per-benchmark JSON and a Markdown + HTML leaderboard to --results-dir. "
                                   "Text-to-image evaluation (FID, HPSv2) is `tsugiki eval t2i`.")
    e.add_argument("benchmarks", nargs="*", metavar="BENCHMARK",
                   help="benchmarks to run (default: all built-in ones that apply); lm-eval:TASK runs a task of "
                        "lm-evaluation-harness (its registry, or --lm-eval-include's YAMLs) on each --model")
    e.add_argument("--model", action="append", default=[], metavar="[LABEL=]PATH",
                   help="causal LM (folder or hub id) for the text benchmarks; repeatable")
    e.add_argument("--vlm-model", action="append", default=[], metavar="[LABEL=]PATH",
                   help="vision-language model for the VQA benchmarks; repeatable")
    e.add_argument("--predictions", action="append", default=[], metavar="[LABEL=]PATH",
                   help="folder of <benchmark>.jsonl files ({id, prediction} lines), or one such file; repeatable")
    e.add_argument("--lm-eval-include", metavar="DIR",
                   help="folder of lm-eval task YAMLs for lm-eval:TASK (pip install 'tsugiki[lm-eval]')")
    e.add_argument("--dataset-dir", help="folder with local copies (<benchmark>/ subfolders); default: the hub")
    e.add_argument("--results-dir", default="bench-results", help="where results go (default: bench-results)")
    e.add_argument("--samples", action="store_true",
                   help="add the built-in sample sets, sample predictions and an embedded tiny LM (offline demo); "
                        "with lm-eval:ja-sample-mc / lm-eval:ja-sample-gen, two sample lm-eval tasks")
    e.add_argument("--limit", type=_positive, help="only the first N items of each benchmark")
    e.add_argument("--max-new-tokens", type=_positive, help="generation length (default: the benchmark's, 1024 for MGSM)")
    e.add_argument("--engine", choices=engine_names(), default="hf",
                   help="what generates the causal LMs' text: hf (transformers) or vllm (pip install 'tsugiki[vllm]'; "
                        "its default dtype runs float32 models in bfloat16, --dtype float32 keeps them) (default hf)")
    e.add_argument("--batch-size", type=_positive, default=8, help="prompts per forward pass, hf engine (default 8)")
    e.add_argument("--device", default="cpu", help="where models run (cpu, cuda, cuda:1, ...)")
    e.add_argument("--dtype", choices=FLOAT_DTYPES, help="dtype models run in (default: hf their own, vllm its auto)")
    e.add_argument("--threads", type=_positive, help="torch CPU threads while generating (default: torch's)")
    e.add_argument("--extraction", choices=EXTRACTIONS, help="MGSM answer extraction (default robust)")
    e.add_argument("--min-score", action="append", default=[], metavar="BENCH[.SCORE]=VALUE",
                   help="exit 1 if a score misses this threshold; repeatable")
    e.add_argument("--baseline", metavar="LABEL", help="leaderboard row the others are compared with")
    e.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    e.set_defaults(func=cmd_eval)
    # `sub` makes VerbParsers (tsugiki.commands.verbs): `tsugiki eval t2i ...` goes to the T2I verb
    e.sub_verbs = {name: verb.build(VerbParser(prog=f"{e.prog} {name}", description=verb.description))
                   for name, verb in EVAL_VERBS.items()}

    r = sub.add_parser("report", help="merge result files into one leaderboard (Markdown, HTML)",
                       description="Rows = models, columns = benchmarks (primary score), best in bold, "
                                   "deltas against --baseline.")
    r.add_argument("results", nargs="+", help="result JSON files or folders holding them")
    r.add_argument("--baseline", metavar="MODEL", help="row the others are compared with")
    r.add_argument("--markdown", metavar="FILE", help="also write the Markdown here")
    r.add_argument("--html", metavar="FILE", help="write an HTML page here")
    r.set_defaults(func=cmd_report)
    return score_sub
