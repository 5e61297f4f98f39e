"""One test per (model, benchmark) case selected by conftest.py; see its docstring for the options."""

import pytest

from tsugiki.benchmarks.cases import check_thresholds


def test_benchmark(case, bench_session, record_testsuite_property):
    result = bench_session.run(case)
    for name, est in result.scores.items():  # into the JUnit XML, as <property name="model/bench/score">
        record_testsuite_property(f"{case.id}/{name}", f"{est.value:.4f} [{est.low:.4f}, {est.high:.4f}] n={result.n}")
    failures = check_thresholds(result, bench_session.thresholds)
    if failures:
        pytest.fail("\n".join(failures), pytrace=False)
