"""`pytest benchmarks/`: one test per (model, benchmark); a score under its threshold fails.

Without options it evaluates the embedded default model (a tiny random Llama built offline, on
the text benchmarks and, where lm-eval is installed, two sample lm-eval tasks written as local YAML + JSONL)
and the sample predictions in tests/data/benchmarks/sample-predictions/ (on every benchmark), with the VQA
sets read from the fixtures in tests/data/benchmarks/. Thresholds
default to none ("runs and reports"). Options point it at real models, data and thresholds:

    pytest benchmarks/ --model evollm=path/to/llm --vlm-model path/to/vlm \
        --predictions other=preds/ --dataset-dir data/ --min-score mgsm-ja=40 --results-dir out/
    pytest benchmarks/ --model path/to/llm --bench lm-eval:arc_easy --bench lm-eval:my_task --lm-eval-include tasks/

Results: <results-dir>/<model>/<benchmark>.json (scores, 95% intervals) and .items.jsonl
(per-item predictions), leaderboard.md / leaderboard.html, and junit.xml (unless --junitxml).
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import pytest

from tsugiki.errors import TsugikiError

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "data" / "benchmarks"
EMBEDDED_MAX_NEW_TOKENS = 16  # a random tiny model says nothing useful; keep the default run short


def pytest_addoption(parser):
    g = parser.getgroup("tsugiki benchmarks")
    g.addoption("--model", action="append", default=[], metavar="[LABEL=]PATH",
                help="causal LM (folder or hub id) for the text benchmarks (MGSM); repeatable")
    g.addoption("--vlm-model", action="append", default=[], metavar="[LABEL=]PATH",
                help="vision-language model for the VQA benchmarks; repeatable")
    g.addoption("--predictions", action="append", default=[], metavar="[LABEL=]PATH",
                help="folder of <benchmark>.jsonl prediction files ({id, prediction} lines); repeatable")
    g.addoption("--dataset-dir", metavar="DIR",
                help="local copies of the data (<benchmark>/ subfolders); default: the hub, or the "
                     "fixtures when no model option is given")
    g.addoption("--results-dir", default="bench-results", metavar="DIR", help="where results go (bench-results)")
    g.addoption("--min-score", action="append", default=[], metavar="BENCH[.SCORE]=VALUE",
                help="fail a benchmark whose (primary) score is below VALUE; repeatable")
    g.addoption("--bench", action="append", default=[], metavar="NAME",
                help="only these benchmarks (lm-eval:TASK: a task of lm-evaluation-harness); repeatable")
    g.addoption("--lm-eval-include", metavar="DIR", help="folder of lm-eval task YAMLs for --bench lm-eval:TASK")
    g.addoption("--limit", type=int, metavar="N", help="only the first N items of each benchmark")
    g.addoption("--max-new-tokens", type=int, metavar="N", help="generation length (default: the benchmark's)")
    g.addoption("--batch-size", type=int, default=8, metavar="N", help="generation batch size (8)")
    g.addoption("--device", default="cpu", help="device for the models (cpu)")
    g.addoption("--engine", default="hf", choices=["hf", "vllm"], help="what generates text: hf or vllm (hf)")
    g.addoption("--dtype", choices=["float32", "float16", "bfloat16"], help="dtype models run in (default: hf their own, vllm its auto)")
    g.addoption("--threads", type=int, metavar="N", help="torch CPU threads while generating (default: torch's)")
    g.addoption("--extraction", choices=["sakana", "robust"], help="MGSM answer extraction (default robust)")
    g.addoption("--baseline", metavar="LABEL", help="leaderboard row the others are compared with")


class BenchSession:
    """The selected cases, their thresholds, and the results gathered so far."""

    def __init__(self, config: pytest.Config):
        from tsugiki.benchmarks import cases as selection

        opt = config.option
        self.results_dir = Path(opt.results_dir)
        self.thresholds = selection.parse_min_scores(opt.min_score)
        self.extraction, self.limit, self.baseline = opt.extraction, opt.limit, opt.baseline
        models, predictions, dataset_dir = list(opt.model), list(opt.predictions), opt.dataset_dir
        benches, include = list(opt.bench) or None, opt.lm_eval_include
        gen = selection.GenerationOptions(max_new_tokens=opt.max_new_tokens, batch_size=opt.batch_size,
                                         device=opt.device, threads=opt.threads, engine=opt.engine, dtype=opt.dtype)
        self.embedded: Path | None = None
        self.default_run = not (models or opt.vlm_model or predictions)
        if self.default_run:
            self._tmp = tempfile.TemporaryDirectory(prefix="tsugiki-bench-")
            if importlib.util.find_spec("lm_eval") is not None and benches is None and include is None:
                from tsugiki.benchmarks.samples import SAMPLE_TASKS, write_sample_tasks
                from tsugiki.benchmarks.specs import BENCHMARKS

                include = str(write_sample_tasks(Path(self._tmp.name) / "lm-eval-tasks"))
                benches = BENCHMARKS.names() + [f"lm-eval:{t}" for t in SAMPLE_TASKS]
            self.embedded = selection.build_embedded_model(self._tmp.name)  # a second: select_cases checks models exist
            models = [f"{selection.EMBEDDED_MODEL}={self.embedded}"]
            predictions = [str(FIXTURES / "sample-predictions")]
            dataset_dir = dataset_dir or FIXTURES
            gen.max_new_tokens = gen.max_new_tokens or EMBEDDED_MAX_NEW_TOKENS
            gen.batch_size = max(gen.batch_size, 32)
            gen.threads = gen.threads or 1  # a tiny model gains nothing from more, and loses much on a busy machine
        self.cases = selection.select_cases(benches, models=models, vlm_models=opt.vlm_model, predictions=predictions,
                                            dataset_dir=dataset_dir, limit=opt.limit, generation=gen,
                                            lm_eval_include=include)
        self.results = []

    def run(self, case):
        from tsugiki.benchmarks.results import write_result

        result = case.evaluate(limit=self.limit, extraction=self.extraction)
        write_result(result, self.results_dir)
        self.results.append(result)
        return result

    def close(self):
        if self.embedded is not None:
            self._tmp.cleanup()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    try:
        config._tsugiki_bench = BenchSession(config)
    except TsugikiError as e:
        raise pytest.UsageError(str(e)) from None
    if not getattr(config.option, "xmlpath", None):  # a JUnit XML by default, beside the results
        config.option.xmlpath = str(config._tsugiki_bench.results_dir / "junit.xml")


def pytest_report_header(config):
    s = config._tsugiki_bench
    what = "default run: embedded tiny LM + sample predictions on fixture data" if s.default_run else "user models"
    return [f"tsugiki benchmarks: {len(s.cases)} cases ({what}); results in {s.results_dir}"]


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        cases = metafunc.config._tsugiki_bench.cases
        metafunc.parametrize("case", cases, ids=[c.id for c in cases])


@pytest.fixture(scope="session")
def bench_session(request):
    return request.config._tsugiki_bench


def pytest_sessionfinish(session, exitstatus):
    s = getattr(session.config, "_tsugiki_bench", None)
    if s is None:
        return
    if s.results:
        from tsugiki.benchmarks import leaderboard

        lb = leaderboard.build(s.results, s.baseline if s.baseline in {r.model for r in s.results} else None)
        s.results_dir.mkdir(parents=True, exist_ok=True)
        (s.results_dir / "leaderboard.md").write_text(leaderboard.to_markdown(lb), encoding="utf-8")
        (s.results_dir / "leaderboard.html").write_text(leaderboard.to_html(lb), encoding="utf-8")
        s.leaderboard = lb
    s.close()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    s = getattr(config, "_tsugiki_bench", None)
    lb = getattr(s, "leaderboard", None)
    if lb is None:
        return
    from tsugiki.benchmarks import leaderboard

    terminalreporter.section("tsugiki leaderboard")
    table = leaderboard.to_markdown(lb).split("\n\n<details>")[0]
    terminalreporter.write_line(table)
    terminalreporter.write_line(f"written: {s.results_dir / 'leaderboard.md'}, {s.results_dir / 'leaderboard.html'}")
