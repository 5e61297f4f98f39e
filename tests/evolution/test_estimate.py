"""Estimated fitness (tsugiki.evolution.estimate) on simulated 2PL responses, where the truth is known:
the IRT fit recovers the item parameters, and the estimators are unbiased and rank candidates as the
full set does."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import kendalltau, pearsonr

from tsugiki.evolution.estimate import IRT, Anchors, IRTEstimate, Subsample, kmeans
from helpers import REPO


def simulate(n_models: int, n_items: int, seed: int, *, a=None, b=None):
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.5, 2.0, n_items) if a is None else a
    b = rng.normal(0.0, 1.0, n_items) if b is None else b
    theta = rng.normal(0.0, 1.0, n_models)
    p = 1.0 / (1.0 + np.exp(-(theta[:, None] * a[None] - b[None])))
    return (rng.random(p.shape) < p).astype(float), a, b, theta


def test_irt_fit_recovers_known_item_parameters_and_abilities():
    responses, a, b, theta = simulate(400, 50, seed=0)
    irt, fitted_theta = IRT.fit(responses, dim=1, seed=0)
    assert irt.a.shape == (50, 1) and irt.b.shape == (50,) and (irt.a > 0).all()
    assert pearsonr(irt.b, b)[0] > 0.95
    assert pearsonr(irt.a[:, 0], a)[0] > 0.7
    assert pearsonr(fitted_theta[:, 0], theta)[0] > 0.9
    # the model reproduces the item means it was fitted on
    assert np.abs(irt.prob(fitted_theta).mean(0) - responses.mean(0)).max() < 0.05


def test_subsample_is_unbiased_over_its_random_subsets():
    responses, *_ = simulate(1, 200, seed=1)
    full = responses[0].mean()
    estimates = [Subsample.fit(200, 20, seed=s) for s in range(400)]
    mean_estimate = np.mean([e.estimate(responses[0, e.items]) for e in estimates])
    assert all(len(e.items) == 20 and len(set(e.items)) == 20 for e in estimates)
    assert mean_estimate == pytest.approx(full, abs=0.01)


def test_anchors_are_exact_when_every_item_in_a_cluster_answers_alike():
    # three groups of identical items (sizes 5, 3, 2): one anchor each, weights 0.5, 0.3, 0.2
    pattern = np.array([[1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 1, 1]], dtype=float)
    calib = np.repeat(pattern, [5, 3, 2], axis=1)
    anchors = Anchors.fit(calib, k=3, seed=0)
    assert sorted(anchors.weights.tolist()) == pytest.approx([0.2, 0.3, 0.5]) and anchors.weights.sum() == pytest.approx(1)
    new = np.repeat(np.array([1.0, 0.0, 1.0]), [5, 3, 2])  # a new model answering the groups 1, 0, 1
    assert anchors.estimate(new[anchors.items]) == pytest.approx(new.mean())


def test_kmeans_separates_obvious_clusters():
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(c, 0.05, (20, 2)) for c in ((0, 0), (5, 5), (0, 5))])
    labels = kmeans(points, 3, seed=1)
    assert sorted(len(set(labels[i:i + 20])) for i in (0, 20, 40)) == [1, 1, 1] and len(set(labels)) == 3


def test_irt_estimates_of_new_candidates_are_unbiased_and_rank_like_the_full_set():
    rng = np.random.default_rng(2)
    a, b = rng.uniform(0.5, 2.0, 200), rng.normal(0.0, 1.0, 200)
    calib, *_ = simulate(60, 200, seed=3, a=a, b=b)
    new, *_ = simulate(40, 200, seed=4, a=a, b=b)
    est = IRTEstimate.fit(calib, k=20, seed=0)
    assert len(est.items) == 20
    estimates = np.array([est.estimate(row[est.items]) for row in new])
    full = new.mean(1)
    errors = estimates - full
    # unbiased: the mean error within 3 standard errors of zero (a fixed 0.02 was 2 SE here, and numpy 2.3's
    # and 2.5's fits land on either side of it)
    assert abs(np.mean(errors)) < 3 * np.std(errors, ddof=1) / np.sqrt(len(errors))
    # a plain mean over 20 of these items has a standard error of about 0.11 (p near 0.5): the estimate
    # must do no worse, and rank the candidates much as the full set does
    assert np.mean(np.abs(estimates - full)) < 0.1
    assert kendalltau(estimates, full)[0] > 0.7


def test_bad_responses_are_refused():
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        IRT.fit(np.array([[0.5, 2.0]]))
    with pytest.raises(ValueError, match="matrix"):
        Anchors.fit(np.zeros(3), k=2)


def test_kendall_tau_b_equals_scipy_with_ties():
    from scipy.stats import kendalltau

    from tsugiki.benchmarks.stats import kendall_tau

    rng = np.random.default_rng(3)
    for n in (2, 7, 30):
        a, b = rng.integers(0, 4, n).tolist(), rng.integers(0, 5, n).tolist()
        expected = kendalltau(a, b).statistic
        assert kendall_tau(a, b) == pytest.approx(expected, abs=1e-12) or (np.isnan(expected) and np.isnan(kendall_tau(a, b)))
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0 and kendall_tau([1, 2, 3], [10, 20, 30]) == 1.0
    assert np.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))


def test_anchors_rank_a_recorded_real_population():
    """The demo's PS candidates on Gemma 3 270M, scored item by item on 100 teacher-forced items
    (perf/fitness_estimate.py's record): anchors fitted on the sources and calibration candidates rank the
    held-back candidates from 10 items with Kendall tau >= 0.8, for every estimator seed tried."""
    import json

    from tsugiki.benchmarks.stats import kendall_tau

    pop = json.loads((REPO / "perf/results/fitness-estimate-population.json").read_text())
    calib = np.array([m["scores"] for m in pop["models"] if m["group"] != "test"])
    test = [np.asarray(m["scores"]) for m in pop["models"] if m["group"] == "test"]
    assert calib.shape == (9, 100) and len(test) == 16
    for seed in range(5):
        anchors = Anchors.fit(calib, 10, seed)
        assert len(anchors.items) == 10
        tau = kendall_tau([anchors.estimate(t[anchors.items]) for t in test], [t.mean() for t in test])
        assert tau >= 0.8
