"""The evaluation engines on Gemma 3 270M (issue 25): vLLM against today's transformers path, in one run.

Not a test: prints tables and, last, ``engine speed: vllm/hf=<ratio>x swap=<seconds>s agree=<percent>%``.

    python perf/engine_speed.py                 # 250 MGSM-JA problems x 2 models x 3 engines, then a PS candidate
    python perf/engine_speed.py --n 10 --items 20   # a smoke run

Part 1, the real MGSM-JA (the vendored problems, the seed's prompt and stop strings, greedy, 256 new tokens) for
the base and the MATH sibling, each engine alone on the machine, engine start and model loads included:

- ``transformers generate`` (the baseline, fp32): today's path before the engines, ``generate`` with
  ``StopStringCriteria`` in batches of 25, every row kept until its batch's longest stops;
- ``vllm`` in its default dtype (``auto``: bfloat16 for these float32 checkpoints) and ``vllm fp32``: one
  resident engine, the MATH sibling swapped in after the base;
- with ``--hf-engine``, also tsugiki's ``hf`` engine (fp32, finished rows leave the batch).

``vllm/hf`` is the baseline's wall time over vLLM's default dtype's; ``agree`` the share of identical responses
between the fp32 runs of vLLM and the baseline; acc / acc_ja per engine beside.

Part 2, one PS candidate end to end as the demo's search scores it (DARE-TIES over base, JA and MATH merged in
memory): ``--items`` of the demo's worked-answer fitness problems. Today's path: ``teacher_forced_accuracy``
(``append_eos``, ``prob_weight`` 0.1) on the ``hf`` engine; vLLM's: the same exact match by short greedy
generation (``exact_match``: the answer then EOS), the merged weights swapped in from memory. The time of a
second candidate (setup excluded, both engines resident) and of its swap; per-item agreement of the two.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path


class GeneratePath:
    """The transformers path the engines replaced: ``generate`` with stop strings, batches of ``batch_size``."""

    def __init__(self, model_dir: Path, template: str, stop, max_new_tokens: int, batch_size: int = 25):
        import torch
        from transformers import AutoModelForCausalLM

        from tsugiki.tokenizer_cache import load_tokenizer

        self.name, self.batch_size = model_dir.name, batch_size
        self.template, self.stop, self.max_new_tokens = template, list(stop), max_new_tokens
        self.tok = load_tokenizer(model_dir)
        self.tok.padding_side = "left"
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()

    def predict(self, items):
        import torch

        from tsugiki.engines.hf import truncate_at_stop

        prompts = [self.template.format(input=i.question) for i in items]
        enc = self.tok(prompts, return_tensors="pt", padding=True)
        with torch.inference_mode():
            ids = self.model.generate(**enc, do_sample=False, num_beams=1, max_new_tokens=self.max_new_tokens,
                                      stop_strings=self.stop, tokenizer=self.tok, pad_token_id=self.tok.pad_token_id)
        texts = self.tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        return [truncate_at_stop(t, self.stop) for t in texts]


def mgsm_part(models: dict[str, Path], n: int, hf_engine: bool) -> tuple[list[dict], dict]:
    from tsugiki.benchmarks.predictors import TextGenerator
    from tsugiki.benchmarks.runner import evaluate, get_spec
    from tsugiki.engines import EngineOptions
    from tsugiki.engines.resident import ResidentEngine

    spec = get_spec("mgsm-ja")
    runs = [("transformers generate", "fp32", None)]
    if hf_engine:
        runs.append(("hf engine", "fp32", ("hf", EngineOptions(batch_size=25))))
    runs += [("vllm", "auto", ("vllm", EngineOptions(max_model_len=2048))),
             ("vllm fp32", "fp32", ("vllm", EngineOptions(dtype="float32", max_model_len=2048)))]
    rows, responses = [], {}
    for label, dtype, engine in runs:
        t0 = time.perf_counter()
        resident = ResidentEngine(*engine) if engine else None
        for model, path in models.items():
            if resident is None:
                gen = GeneratePath(path, spec.prompt, spec.stop, 256)
            else:
                gen = TextGenerator(path, spec.prompt, stop=spec.stop, max_new_tokens=256, name=model,
                                    engine=resident.load(path))
            res = evaluate(spec, gen, limit=n, metric_options={"extraction": "sakana"})
            responses[(label, model)] = [r["prediction"] for r in res.items]
            rows.append({"engine": label, "dtype": dtype, "model": model, "acc_ja": res.scores["acc_ja"].value,
                         "acc": res.scores["acc"].value})
            if resident is not None and dtype == "auto":
                dtype = resident.engine.describe()["dtype"]
                rows[-1]["dtype"] = dtype
        wall = time.perf_counter() - t0
        if resident is not None:
            resident.close()
        for r in rows:
            if r["engine"] == label:
                r["wall"] = wall  # both models, engine start and loads included
        print(f"  {label}: {wall:.1f} s", flush=True)
    pairs = [(a, b) for m in models for a, b in zip(responses[("transformers generate", m)], responses[("vllm fp32", m)])]
    agree = 100.0 * sum(a == b for a, b in pairs) / len(pairs)
    walls = {r["engine"]: r["wall"] for r in rows}
    return rows, {"ratio": walls["transformers generate"] / walls["vllm"], "agree": agree,
                  "ratio_fp32": walls["transformers generate"] / walls["vllm fp32"]}


def candidate_part(work: Path, sources: dict[str, str], items: int, seed: int) -> dict:
    from tsugiki.demo.lm.search import FULL, TF_ARGS, ps_config, write_data
    from tsugiki.evolution import from_data, make_problem

    budget = dataclasses.replace(FULL, fitness="teacher_forced", fitness_n=-(-items // 4))
    data = write_data(work / "data", budget)
    lines = data["fitness"].read_text(encoding="utf-8").splitlines()[:items]
    data["fitness"].write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = {}
    for label, engine, function, args in (
            ("hf, teacher forced", "hf", "teacher_forced_accuracy", TF_ARGS),
            ("vllm, exact match by generation", "vllm", "exact_match", {})):
        cfg = ps_config(sources, data, seed, dataclasses.replace(budget, engine=engine))
        cfg.pop("validation")
        cfg["fitness"].update(function=function, args=args)
        config = from_data(cfg, base_dir=work)
        problem = make_problem(config, work / f"run-{engine}")
        x0 = list(problem.space.x0())
        t0 = time.perf_counter()
        problem.evaluate_items(problem.space.decode(x0))  # setup: models, engine
        setup = time.perf_counter() - t0
        x1 = [v + 0.3 * (-1) ** i for i, v in enumerate(x0)]
        t0 = time.perf_counter()
        scores = problem.evaluate_items(problem.space.decode(x1))
        seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        problem.engine.load_model(problem.model)
        swap = time.perf_counter() - t0
        hits = [float(s >= 1.0) for s in scores]  # teacher forced: 1 + 0.1 x probability when exact
        out[label] = {"setup": setup, "seconds": seconds, "swap": swap, "hits": hits,
                      "engine": problem.engine.describe()}
        problem.close()
    (a, b) = (out[k]["hits"] for k in out)
    out["agree"] = sum(x == y for x, y in zip(a, b))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("perf-out/engine-speed"), help="sources and run dirs")
    ap.add_argument("--n", type=int, default=250, help="MGSM-JA problems (all: 250)")
    ap.add_argument("--items", type=int, default=100, help="worked-answer fitness items of the PS candidate")
    ap.add_argument("--hf-engine", action="store_true", help="also time tsugiki's hf engine on MGSM-JA")
    ap.add_argument("--skip-mgsm", action="store_true", help="only the PS candidate")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from tsugiki.demo.lm.stage import prepare_sources
    from tsugiki.demo.stage import StageContext
    from tsugiki.engines import ENGINES

    if not ENGINES.get("vllm").available():
        raise SystemExit("perf/engine_speed.py compares against vLLM: pip install 'tsugiki[vllm]' (see the README)")
    work = args.work.resolve()  # absolute: the configs written below are resolved against their own folder
    (work / "lm").mkdir(parents=True, exist_ok=True)
    sources = prepare_sources(StageContext(run_dir=work, out=work / "lm", progress=True))
    result = {"n": args.n, "items": args.items}
    if not args.skip_mgsm:
        print(f"MGSM-JA, {args.n} problems, base and MATH sibling:", flush=True)
        rows, summary = mgsm_part({"base": Path(sources["base"]), "math": Path(sources["math"])}, args.n, args.hf_engine)
        result.update(mgsm=rows, **summary)
        print("\n| engine | dtype | model | acc_ja | acc | wall (both models) |\n|---|---|---|---:|---:|---:|")
        for r in rows:
            print(f"| {r['engine']} | {r['dtype']} | {r['model']} | {r['acc_ja']:.1f} | {r['acc']:.1f} | {r['wall']:.1f} s |")
        print(f"\nvllm/transformers wall: {summary['ratio']:.2f}x (default dtype), {summary['ratio_fp32']:.2f}x (fp32); "
              f"identical fp32 responses: {summary['agree']:.1f} %")
    print(f"\nOne PS candidate, {args.items} worked-answer items:", flush=True)
    cand = candidate_part(work / "candidate", sources, args.items, args.seed)
    result["candidate"] = {k: v for k, v in cand.items()}
    print("\n| path | engine | setup | candidate (merge, swap, score) | swap | exact |\n|---|---|---:|---:|---:|---:|")
    for label, c in cand.items():
        if label != "agree":
            print(f"| {label} | {c['engine']['engine']} {c['engine'].get('dtype', '')} | {c['setup']:.1f} s | "
                  f"{c['seconds']:.1f} s | {c['swap']:.2f} s | {int(sum(c['hits']))}/{len(c['hits'])} |")
    print(f"per-item agreement of the two: {cand['agree']}/{args.items}")
    (work / "engine_speed.json").write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    swap = cand["vllm, exact match by generation"]["swap"]
    print(f"engine speed: vllm/hf={result.get('ratio', float('nan')):.2f}x swap={swap:.2f}s "
          f"agree={result.get('agree', float('nan')):.1f}%")


if __name__ == "__main__":
    main()
