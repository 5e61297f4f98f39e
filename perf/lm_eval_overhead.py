"""What scoring through lm-evaluation-harness costs over calling tsugiki's engine directly (issue 28), in one run.

Not a test: prints a table and, last, ``lm-eval overhead: lm_eval/direct=<ratio>x agree=<percent>%``.

    python perf/lm_eval_overhead.py                        # Gemma 3 270M (the demo's real base), 100 MGSM-JA problems
    python perf/lm_eval_overhead.py --model tiny --docs 20 # a tiny random LM built offline: a smoke run

The same greedy generations are asked two ways of one resident engine (``--engine``, default the fastest
installed): ``direct``, ``engine.generate`` on the MGSM-JA prompts (the seed's Japanese prompt and stop
strings, ``--max-new-tokens``) and the number scored by :func:`tsugiki.benchmarks.mgsm.score_mgsm`; ``lm_eval``,
the same prompts as a local lm-eval task (YAML over JSONL; ``generate_until`` with the same stops and token
limit; exact match of the last number) run by :func:`tsugiki.benchmarks.harness.evaluate_tasks`, which is what
the ``lm_eval`` fitness and ``tsugiki eval lm-eval:TASK`` do. Each path runs twice and the second is timed (the
first warms caches: lm-eval's task index, the dataset's Arrow cache). ``agree``: the share of identical texts.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def task_files(folder: Path, prompts: list[str], answers: list[str], stop: list[str], max_new_tokens: int) -> str:
    import yaml

    data = folder / "mgsm_ja_prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "answer": a}, ensure_ascii=False) + "\n"
                            for p, a in zip(prompts, answers)), encoding="utf-8")
    doc = {"task": "mgsm_ja_prompts", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
           "test_split": "test", "output_type": "generate_until", "doc_to_text": "{{prompt}}",
           "doc_to_target": "{{answer}}", "generation_kwargs": {"until": stop, "max_gen_toks": max_new_tokens,
                                                                 "do_sample": False},
           "filter_list": [{"name": "last-number", "filter": [
               {"function": "regex", "regex_pattern": "(-?[0-9]+)", "group_select": -1}, {"function": "take_first"}]}],
           "metric_list": [{"metric": "exact_match"}], "metadata": {"version": 1.0}}
    (folder / "mgsm_ja_prompts.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return "mgsm_ja_prompts"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="real", help="real (Gemma 3 270M from its GGUF package), tiny, or a model dir")
    ap.add_argument("--engine", choices=["hf", "vllm"], help="default: vllm where installed, else hf")
    ap.add_argument("--docs", type=int, default=100, help="MGSM-JA problems (default 100)")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="generation limit (default 64)")
    args = ap.parse_args()

    from tsugiki.benchmarks import harness, mgsm
    from tsugiki.benchmarks.loaders import load_mgsm
    from tsugiki.engines import EngineOptions, fastest_available, open_engine

    with tempfile.TemporaryDirectory(prefix="tsugiki-lm-eval-overhead-") as tmp:
        if args.model == "real":
            from tsugiki.demo.base_model import real_base

            model = real_base()
        elif args.model == "tiny":
            from tsugiki.benchmarks.cases import build_embedded_model

            model = build_embedded_model(tmp)
        else:
            model = Path(args.model)
        items = load_mgsm("ja")[: args.docs]
        prompts = [mgsm.JA_ALPACA_COT_TEMPLATE.format(input=i.question) for i in items]
        stop = list(mgsm.SEED_STOP_STRINGS)
        task = task_files(Path(tmp), prompts, [str(i.answer) for i in items], stop, args.max_new_tokens)
        name = args.engine or fastest_available()
        engine = open_engine(name, str(model), EngineOptions())
        try:
            timings, texts = {}, {}
            for path in ("direct", "lm_eval", "direct", "lm_eval"):
                start = time.perf_counter()
                if path == "direct":
                    texts[path] = engine.generate(prompts, stop=stop, max_new_tokens=args.max_new_tokens)
                    mgsm.score_mgsm(texts[path], [i.answer for i in items], extraction="robust", language_filter=False)
                else:
                    out = harness.evaluate_tasks(engine, [task], include_path=tmp)
                    rows = sorted(out["samples"][task], key=lambda s: s["doc_id"])
                    texts[path] = [r["resps"][0][0] for r in rows]
                timings[path] = time.perf_counter() - start
        finally:
            engine.close()
    agree = sum(a == b for a, b in zip(texts["direct"], texts["lm_eval"])) / len(items)
    print(f"| path | engine | docs | wall (second run) |\n|---|---|--:|--:|")
    for path in ("direct", "lm_eval"):
        print(f"| {path} | {name} | {len(items)} | {timings[path]:.1f} s |")
    print(f"lm-eval overhead: lm_eval/direct={timings['lm_eval'] / timings['direct']:.2f}x agree={100 * agree:.1f}%")


if __name__ == "__main__":
    main()
