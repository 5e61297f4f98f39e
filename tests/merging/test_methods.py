"""Merge-method kernels: hand-worked cases, statistical checks of the randomized methods, and a
cross-check against mergekit 0.1.5's own outputs (fixtures from scripts/make_mergekit_reference.py;
mergekit itself is not imported here)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from tsugiki.errors import MergeError, UnknownNameError
from tsugiki.merging import selection as sel
from tsugiki.merging import sparsify as sp
from tsugiki.merging.methods import METHODS, REQUIRED, MergeInputs, get_method
from helpers import TEST_DATA

REF_DIR = TEST_DATA / "mergekit_reference"
SQ2 = math.sqrt(2)


def T(*xs) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float32)


def run(method: str, tensors, base_index=0, per_model=None, seed=None, name="w", **globals_):
    """Call a kernel; per_model lists dicts for the non-base sources, in order."""
    per_model = list(per_model or [])
    params = []
    for i in range(len(tensors)):
        params.append({} if i == base_index else per_model.pop(0))
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return get_method(method)(MergeInputs(tensors, base_index, params, gen, name), **globals_)


def close(a: torch.Tensor, b, tol=1e-6) -> bool:
    b = torch.as_tensor(b, dtype=a.dtype)
    return a.shape == b.shape and torch.allclose(a, b, atol=tol, rtol=0)


# --------------------------------------------------------------------------- registry / specs

# Parameter names, scope and defaults as read from mergekit 0.1.5 (merge_methods/registry.py,
# generalized_task_arithmetic.py, linear.py, slerp.py, model_stock.py, passthrough.py).
# (name -> {param: (default, per_model)}, base policy, randomized, min_models, max_models)
_GTA = lambda normalize, rescale, **extra: {  # noqa: E731
    "int8_mask": (False, False), "normalize": (normalize, False), "rescale": (rescale, False),
    "lambda": (1.0, False), "weight": (REQUIRED, True), "density": (1.0, True), **extra,
}
EXPECTED = {
    "linear": ({"weight": (REQUIRED, True), "normalize": (True, False)}, "ignored", False, 1, None),
    "task_arithmetic": (_GTA(False, False), "required", False, 1, None),
    "ties": (_GTA(True, False), "required", False, 1, None),
    "dare_ties": (_GTA(False, True), "required", True, 1, None),
    "dare_linear": (_GTA(False, True), "required", True, 1, None),
    "breadcrumbs": (_GTA(False, False, gamma=(0.01, True)), "required", False, 1, None),
    "breadcrumbs_ties": (_GTA(False, False, gamma=(0.01, True)), "required", False, 1, None),
    "della": (_GTA(True, True, epsilon=(0.15, True)), "required", True, 1, None),
    "della_linear": (_GTA(False, True, epsilon=(0.15, True)), "required", True, 1, None),
    "slerp": ({"t": (REQUIRED, False)}, "required", False, 2, 2),
    "model_stock": ({"filter_wise": (False, False)}, "required", False, 3, None),
    # offset is tsugiki's, not mergekit's: DFS folds scales into Gemma's (1 + w) norms with it
    "passthrough": ({"scale": (None, True), "offset": (None, True)}, "ignored", False, 1, 1),
    "nearswap": ({"t": (REQUIRED, False)}, "required", False, 2, 2),
    "karcher": ({"max_iter": (10, False), "tol": (1e-5, False)}, "ignored", False, 1, None),
    "sce": ({"select_topk": (1.0, False), "int8_mask": (False, False)}, "required", False, 1, None),
    "nuslerp": ({"weight": (REQUIRED, True), "nuslerp_row_wise": (False, False), "nuslerp_flatten": (True, False)},
                "optional", False, 2, 3),
    "multislerp": ({"weight": (REQUIRED, True), "normalize_weights": (True, False), "eps": (1e-8, False)},
                   "optional", False, 1, None),
    "arcee_fusion": ({}, "required", False, 2, 2),
    "ram": ({"epsilon": (1e-5, False)}, "required", False, 1, None),
    "ramplus_tl": ({"r": (0.1, False), "alpha": (0.2, False), "epsilon": (1e-5, False)}, "required", False, 1, None),
}


def test_registry_names_and_lookup():
    assert sorted(METHODS.names()) == sorted(EXPECTED)
    assert get_method("ties") is METHODS.get("ties")
    with pytest.raises(UnknownNameError, match="did you mean 'ties'"):
        get_method("tiez")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_method_specs_match_mergekit(name):
    params, base, randomized, lo, hi = EXPECTED[name]
    m = get_method(name)
    assert m.name == name and m.reference
    assert {p.name: (p.default, p.per_model) for p in m.params} == params
    assert (m.base, m.randomized, m.min_models, m.max_models) == (base, randomized, lo, hi)


# --------------------------------------------------------------------------- nearswap

def test_nearswap_hand():
    """Base [0, 1, 2, 3], other [0.05, 1.5, 2, 1], t = 0.1, worked by hand: |a - b| = [0.05, 0.5, 0, 2]
    -> w = [1 (capped), 0.2, 1 (floor 1e-6), 0.05] -> out = [0.05, 1.1, 2, 2.9]."""
    a, b = T(0, 1, 2, 3), T(0.05, 1.5, 2, 1)
    assert close(run("nearswap", [a, b], 0, [{}, {}], t=0.1), [0.05, 1.1, 2, 2.9])
    assert close(run("nearswap", [b, a], 1, [{}, {}], t=0.1), [0.05, 1.1, 2, 2.9])  # the base may come second
    assert torch.equal(run("nearswap", [a, b], 0, [{}, {}], t=0.0), a)  # t = 0: the base
    assert close(run("nearswap", [a, b], 0, [{}, {}], t=10.0), b)  # t above every gap: the other model
    with pytest.raises(MergeError, match="needs parameter 't'"):
        run("nearswap", [a, b], 0, [{}, {}])
    with pytest.raises(MergeError, match="needs exactly 2 models"):
        run("nearswap", [a, b, b], 0, [{}, {}, {}], t=0.1)
    with pytest.raises(MergeError, match="needs a base"):
        run("nearswap", [a, b], None, [{}, {}], t=0.1)


def test_nearswap_is_the_formula_bit_for_bit():
    g = torch.Generator().manual_seed(5)
    a = torch.randn(1000, generator=g)
    b = a + 0.01 * torch.randn(1000, generator=g)
    b[:10] = a[:10]  # equal elements: the 1e-6 floor
    w = (0.005 / (a - b).abs().clamp(min=1e-6)).clamp(min=0, max=1)
    assert torch.equal(run("nearswap", [a, b], 0, [{}, {}], t=0.005), w * b + (1 - w) * a)


# --------------------------------------------------------------------------- karcher

def test_karcher_of_two_unit_vectors_is_their_geodesic_midpoint():
    u, v = T(1, 0, 0), T(0, 1, 0)
    h = math.sqrt(0.5)
    assert close(run("karcher", [u, v], None, [{}, {}]), [h, h, 0])
    # norms 2 and 4: the midpoint direction scaled by the mean norm 3
    assert close(run("karcher", [2 * u, 4 * v], None, [{}, {}]), [3 * h, 3 * h, 0])
    one = T(0.3, -2, 5)
    assert torch.equal(run("karcher", [one], None, [{}]), one)  # one input: itself


def test_karcher_on_a_great_circle_is_the_mean_angle():
    """Directions at angles 0, 0.2 and 1.3 rad on one great circle (within a half-circle): their Karcher
    mean is the direction at the mean angle 0.5 (closed form); the extrinsic mean (the first guess) is not."""
    angles = (0.0, 0.2, 1.3)
    pts = [T(math.cos(a), math.sin(a), 0.0) for a in angles]
    out = run("karcher", pts, None, [{}] * 3, max_iter=100, tol=1e-9)
    assert close(out, [math.cos(0.5), math.sin(0.5), 0.0])
    first_guess = run("karcher", pts, None, [{}] * 3, max_iter=0)
    assert not close(first_guess, [math.cos(0.5), math.sin(0.5), 0.0], tol=1e-3)
    with pytest.raises(MergeError, match="max_iter"):
        run("karcher", pts, None, [{}] * 3, max_iter=-1)
    assert torch.equal(run("karcher", [T(0, 0), T(0, 0)], None, [{}, {}]), T(0, 0))  # no direction: zeros


# --------------------------------------------------------------------------- nuslerp / multislerp

def test_nuslerp_closed_forms():
    """Orthogonal unit vectors (θ = π/2): t = w2 / (w1 + w2), out = sin((1-t)π/2) a + sin(tπ/2) b."""
    a, b = T(1, 0), T(0, 1)
    mid = run("nuslerp", [a, b], None, [{"weight": 1.0}, {"weight": 1.0}])
    assert close(mid, [1 / SQ2, 1 / SQ2])  # the geodesic midpoint
    q = run("nuslerp", [a, b], None, [{"weight": 1.0}, {"weight": 3.0}])  # t = 0.75
    assert close(q, [math.sin(math.pi / 8), math.sin(3 * math.pi / 8)])
    assert close(run("nuslerp", [a, b], None, [{"weight": 2.0}, {"weight": -2.0}]), mid)  # zero sum: t = 0.5
    # with a base, the task vectors are interpolated and the base added back
    c = T(5, -3)
    assert close(run("nuslerp", [c, c + a, c + b], 0, [{"weight": 1.0}, {"weight": 1.0}]), c + mid)
    # parallel vectors: plain linear interpolation, norms mixed (2 and 4 -> 3 at t = 0.5)
    assert close(run("nuslerp", [2 * a, 4 * a], None, [{"weight": 1.0}, {"weight": 1.0}]), [3, 0])
    # row-wise / per-row / whole: rows of [[1, 0], [0, 1]] and [[0, 1], [1, 0]] are orthogonal pairs, its
    # columns too; the flattened tensors are orthogonal as a whole
    x, y = torch.eye(2), torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    half = 1 / SQ2
    for opts in ({}, {"nuslerp_flatten": False}, {"nuslerp_flatten": False, "nuslerp_row_wise": True}):
        assert close(run("nuslerp", [x, y], None, [{"weight": 1}, {"weight": 1}], **opts), [[half, half], [half, half]])
    # rows: [[1, 0], [1, 0]] vs [[0, 1], [2, 0]]: row 0 orthogonal (slerp), row 1 parallel (linear: 1.5);
    # column-wise, [1, 1] vs [0, 2] are 45° apart; the zero column [0, 0] vs [1, 0] counts as orthogonal
    # (cos 0), so it becomes sin(π/4) x [1, 0]
    x, y = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    assert close(run("nuslerp", [x, y], None, [{"weight": 1}, {"weight": 1}], nuslerp_flatten=False),
                 [[half, half], [1.5, 0.0]])
    col = run("nuslerp", [x, y], None, [{"weight": 1}, {"weight": 1}], nuslerp_flatten=False, nuslerp_row_wise=True)
    s = math.sin(math.pi / 8) / math.sin(math.pi / 4)  # sin(θ/2) / sin θ at θ = π/4
    assert close(col[:, 0], [s * 1, s * (1 + 2)]) and close(col[:, 1], [half, 0])


def test_nuslerp_needs_two_models_besides_the_base():
    x = T(1, 2)
    with pytest.raises(MergeError, match="exactly 2 models"):
        run("nuslerp", [x, x, x, x], 0, [{"weight": 1.0}] * 3)
    with pytest.raises(MergeError, match="needs 'weight'"):
        run("nuslerp", [x, x], None, [{}, {}])


def test_multislerp_closed_forms():
    a, b = T(1, 0), T(0, 1)
    # two unit vectors, equal weights: the mean direction itself, the geodesic midpoint
    assert close(run("multislerp", [a, b], None, [{"weight": 1.0}, {"weight": 1.0}]), [1 / SQ2, 1 / SQ2])
    # norms 2 and 4, weights normalised to 0.5: the midpoint direction at the mean norm 3
    assert close(run("multislerp", [2 * a, 4 * b], None, [{"weight": 1}, {"weight": 1}]), [3 / SQ2, 3 / SQ2], tol=1e-5)
    # unnormalised weights scale the norm: 2 x 1 + 2 x 1 = 4
    out = run("multislerp", [a, b], None, [{"weight": 2.0}, {"weight": 2.0}], normalize_weights=False)
    assert close(out, [4 / SQ2, 4 / SQ2], tol=1e-5)
    # one model: itself; a base and one model: that model
    assert torch.equal(run("multislerp", [a], None, [{"weight": 0.3}]), a)
    assert torch.equal(run("multislerp", [b, a], 0, [{"weight": 0.3}]), a)
    # with a base the task vectors are interpolated
    c = T(1, 1)
    assert close(run("multislerp", [c, c + a, c + b], 0, [{"weight": 1}, {"weight": 1}]), c + T(1 / SQ2, 1 / SQ2))
    # opposite directions with balancing weights: two models fall back to the weighted sum, three are an error
    assert close(run("multislerp", [a, -3 * a], None, [{"weight": 1}, {"weight": 1}]), [-1, 0])
    with pytest.raises(MergeError, match="weighted mean"):
        run("multislerp", [a, -a, b - b], None, [{"weight": 1}, {"weight": 1}, {"weight": 1}])


# --------------------------------------------------------------------------- arcee_fusion / ram

def test_arcee_fusion_hand():
    """A 1-D tensor is one row, so its KL factor scales every importance alike and the mask is
    |d| >= Q2 + 1.5 (Q3 - Q1) of |d|. d = [.1 .. .7, 3] (n = 8): the quartiles are the sorted values at
    indices 1, 3, 5: 0.2, 0.4, 0.6 -> τ = 0.4 + 1.5 x 0.4 = 1.0, and only the last element moves."""
    a = torch.zeros(8)
    d = T(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 3.0)
    assert close(run("arcee_fusion", [a, a + d], 0, [{}]), [0] * 7 + [3.0])
    assert close(run("arcee_fusion", [a + d, a], 1, [{}]), [0] * 7 + [3.0])  # the base listed second
    assert close(run("arcee_fusion", [a + d, a], 0, [{}]), d * (d < 1))  # roles swapped: the outlier goes to 0
    # a row moved by a constant changes no softmax, so its KL factor and importance are 0 although it moved
    # most. With the row above (KL k > 0) and a row all moved by 10, the 16 sorted importances are 8 zeros,
    # then k x d: indices 3, 7, 11 give Q1 = 0, Q2 = 0, Q3 = 0.4k -> τ = 0.6k: d's 0.6, 0.7 and 3 move
    base = torch.zeros(2, 8)
    other = torch.stack([d, torch.full((8,), 10.0)])
    want = torch.zeros(2, 8)
    want[0, 5:] = T(0.6, 0.7, 3.0)
    assert close(run("arcee_fusion", [base, other], 0, [{}]), want)
    with pytest.raises(MergeError, match="exactly 2"):
        run("arcee_fusion", [a, a, a], 0, [{}, {}])


def test_ram_hand():
    """Base 0; d1 = [1, 2, 0, 3e-6], d2 = [0, 4, 5, 0]. Changed (|d| > 1e-5): element 0 by d1 only,
    1 by both, 2 by d2 only, 3 by none (3e-6 is below epsilon). ram keeps unique changes whole and
    averages shared ones: [1, 3, 5, 0] (task arithmetic's mean would halve the unique ones)."""
    b, x1, x2 = T(0, 0, 0, 0), T(1, 2, 0, 3e-6), T(0, 4, 5, 0)
    assert close(run("ram", [b, x1, x2], 0, [{}, {}]), [1, 3, 5, 0])
    assert close(run("ram", [b, x1, x2], 0, [{}, {}], epsilon=1e-7), [1, 3, 5, 3e-6])
    # ramplus_tl: each model shares 1 element and has 1 of its own: ρ = 1, clamped to alpha = 0.2,
    # λ = 1 + 0.1 x 0.2 = 1.02 on the unique changes
    assert close(run("ramplus_tl", [b, x1, x2], 0, [{}, {}]), [1.02, 3, 5.1, 0])
    assert close(run("ramplus_tl", [b, x1, x2], 0, [{}, {}], r=0.5, alpha=2.0), [1.5, 3, 7.5, 0])
    # a model with no unique change: ρ = shared / epsilon, clamped; its λ has nothing to scale
    x3 = T(0, 1, 0, 0)  # x1 changes elements 0 and 1, x3 only 1: ρ1 = 1 / 1, λ1 = 1.1 at alpha = 1
    assert close(run("ramplus_tl", [b, x1, x3], 0, [{}, {}], alpha=1.0), [1.1, 1.5, 0, 0])
    assert torch.equal(run("ram", [b], 0, []), b)


# --------------------------------------------------------------------------- sce

def test_sce_hand():
    """Base 0; task vectors d1 = [2, 1, 0, -1], d2 = [0, 1, 2, 3], by hand. Energies mean(d^2): 1.5 and 3.5 ->
    w = [0.3, 0.7]. Majority signs (sum [2, 2, 2, 2] >= 0): all +, so d1's -1 and the zeros are erased:
    element 0: 0.3*2 / 0.3 = 2; 1: (0.3 + 0.7) / 1 = 1; 2: 0.7*2 / 0.7 = 2; 3: 0.7*3 / 0.7 = 3."""
    b, d1, d2 = T(0, 0, 0, 0), T(2, 1, 0, -1), T(0, 1, 2, 3)
    assert close(run("sce", [b, d1, d2], 0, [{}, {}]), [2, 1, 2, 3])
    # variances across the models: [1, 0, 1, 4], 3 nonzero. select_topk 0.34: k = int(3 x 0.34) = 1, only
    # element 3 survives (d1 -> [0, 0, 0, -1], d2 -> [0, 0, 0, 3]); its majority sign is +, so d1's -1 is erased
    assert close(run("sce", [b, d1, d2], 0, [{}, {}], select_topk=0.34), [0, 0, 0, 3])
    assert torch.equal(run("sce", [b, d1, d2], 0, [{}, {}], select_topk=0.25), b)  # k = int(0.75) = 0
    assert torch.equal(run("sce", [b], 0, []), b)  # no other model: the base
    assert torch.equal(run("sce", [b, d1, d2], 0, [{}, {}], select_topk=0.0), b)  # nothing selected
    assert torch.equal(run("sce", [b, d1, d2], 0, [{}, {}], int8_mask=True), run("sce", [b, d1, d2], 0, [{}, {}]))


# --------------------------------------------------------------------------- linear / task arithmetic

def test_linear_hand():
    a, b = T(1, 2), T(3, 6)
    # normalize (default): (1*1 + 3*3)/4 = 2.5, (1*2 + 3*6)/4 = 5
    assert close(run("linear", [a, b], None, [{"weight": 1}, {"weight": 3}]), [2.5, 5])
    # no normalize: plain weighted sum
    assert close(run("linear", [a, b], None, [{"weight": 1}, {"weight": 3}], normalize=False), [10, 20])
    with pytest.raises(MergeError, match="w:.*sum to 0"):
        run("linear", [a, b], None, [{"weight": 1}, {"weight": -1}])
    with pytest.raises(MergeError, match="weight"):
        run("linear", [a, b], None, [{"weight": 1}, {}])


def test_task_arithmetic_hand():
    b, m1, m2 = T(1, 2), T(2, 2), T(1, 4)
    pm = [{"weight": 0.5}, {"weight": 1.0}]
    # deltas [1,0], [0,2] -> b + 0.5*[1,0] + 1*[0,2] = [1.5, 4]
    assert close(run("task_arithmetic", [b, m1, m2], 0, pm), [1.5, 4])
    # lambda scales the merged delta: b + 2*[0.5, 2]
    assert close(run("task_arithmetic", [b, m1, m2], 0, pm, **{"lambda": 2.0}), [2, 6])
    # normalize divides by sum(weights) = 1.5: b + [0.5, 2]/1.5
    assert close(run("task_arithmetic", [b, m1, m2], 0, pm, normalize=True), [1 + 1 / 3, 2 + 4 / 3])
    # the base may be anywhere in the list; no non-base model -> the base
    assert close(run("task_arithmetic", [m1, b, m2], 1, pm), [1.5, 4])
    assert close(run("task_arithmetic", [b], 0), b)
    with pytest.raises(MergeError, match="needs a base"):
        run("task_arithmetic", [m1, m2], None, pm)
    with pytest.raises(MergeError, match="unknown parameter"):
        run("task_arithmetic", [b, m1, m2], 0, pm, lamda=2.0)


# --------------------------------------------------------------------------- TIES

def test_ties_hand():
    b = T(1, 1, 1)
    # deltas d1 = [2, -1, 0.5], d2 = [-1, 1.5, -0.5], d3 = [0.5, -3, 2]
    ms = [b + T(2, -1, 0.5), b + T(-1, 1.5, -0.5), b + T(0.5, -3, 2)]
    pm = [{"weight": 1.0, "density": 0.7}, {"weight": 2.0, "density": 0.7}, {"weight": 0.5, "density": 0.7}]
    # trim: k = int(0.7*3) = 2 largest magnitudes kept per task vector
    #   d1 -> [2, -1, 0], d2 -> [-1, 1.5, 0], d3 -> [0, -3, 2]
    # weight: d1' = [2, -1, 0], d2' = [-2, 3, 0], d3' = [0, -1.5, 1]
    # elect: sum = [0, 0.5, 1] -> signs [+, +, +] (a zero sum elects +)
    # disjoint merge (zeros never agree):
    #   e0: only d1' (2) agrees -> 2 / w1 = 2/1 = 2
    #   e1: only d2' (3) agrees -> 3 / w2 = 3/2 = 1.5
    #   e2: only d3' (1) agrees -> 1 / w3 = 1/0.5 = 2
    assert close(run("ties", [b, *ms], 0, pm), [3, 2.5, 3])
    # normalize=False: b + [2, 3, 1]
    assert close(run("ties", [b, *ms], 0, pm, normalize=False), [3, 4, 2])
    # int8_mask changes only mergekit's mask storage, never the result
    assert close(run("ties", [b, *ms], 0, pm, int8_mask=True), [3, 2.5, 3])
    # density default 1.0: no trim. weighted: [2,-1,.5], [-2,3,-1], [.25,-1.5,1]
    # sums [.25, .5, .5] -> all +; e0: (2+.25)/(1+.5) = 1.5; e1: 3/2; e2: (.5+1)/(1+.5) = 1
    pm1 = [{"weight": 1.0}, {"weight": 2.0}, {"weight": 0.5}]
    assert close(run("ties", [b, *ms], 0, pm1), [2.5, 2.5, 2])


def test_ties_all_disagree_keeps_base_and_zero_density():
    b = T(0.0, 5.0)
    # e0: deltas +1 and -1 with weights 1 -> sum 0 elects +, only +1 agrees -> 1/1
    # e1: both deltas 0 -> nothing agrees, divisor 0 -> 1, merged delta 0 -> base
    out = run("ties", [b, T(1, 5), T(-1, 5)], 0, [{"weight": 1.0}, {"weight": 1.0}])
    assert close(out, [1, 5])
    # density 0 prunes everything -> the base
    out = run("ties", [b, T(1, 7), T(3, 9)], 0, [{"weight": 1.0, "density": 0.0}] * 2)
    assert close(out, b)


def test_magnitude_ties_and_rescale():
    # equal magnitudes: the lower positions win
    assert close(sp.magnitude(T(1, -1, 1, -1), 0.5), [1, -1, 0, 0])
    # at least one entry survives a positive density; density >= 1 is the identity
    assert close(sp.magnitude(T(1, -3, 2), 0.01), [0, -3, 0])
    x = T(1, -3, 2)
    assert sp.magnitude(x, 1.0) is x
    # rescale restores the L1 norm: kept [-3, 2] (L1 5) scaled by 6/5
    assert close(sp.magnitude(T(1, -3, 2), 0.7, rescale=True), [0, -3.6, 2.4])


def test_selection_masks_equal_stable_sort():
    g = torch.Generator().manual_seed(0)
    w = torch.randint(0, 7, (500,), generator=g).float()  # many ties
    asc = torch.argsort(w, stable=True)
    desc = torch.argsort(w, descending=True, stable=True)
    for k in (0, 1, 3, 77, 250, 499, 500):
        want = torch.zeros(500, dtype=torch.bool)
        want[asc[:k]] = True
        assert torch.equal(sel.smallest_mask(w, k), want)
        want = torch.zeros(500, dtype=torch.bool)
        want[desc[:k]] = True
        assert torch.equal(sel.largest_mask(w, k), want)


# --------------------------------------------------------------------------- breadcrumbs

def test_breadcrumbs_hand():
    x = T(-1, 2, -3, 4, -5, 6, -7, 8, -9, 10)  # magnitude rank = position
    # density .5, gamma .1: keep 5, drop top int(.1*10)=1 (|10|) and the bottom 10-5-1 = 4
    assert close(sp.magnitude_outliers(x, 0.5, 0.1), [0, 0, 0, 0, -5, 6, -7, 8, -9, 0])
    # density .95, gamma .1: keep int(9.5)=9, drop the top 1, bottom 0
    assert close(sp.magnitude_outliers(x, 0.95, 0.1), [-1, 2, -3, 4, -5, 6, -7, 8, -9, 0])
    # density .95, gamma .2: 9 + 2 > 10 -> fewer outliers removed so 9 remain
    assert close(sp.magnitude_outliers(x, 0.95, 0.2), [-1, 2, -3, 4, -5, 6, -7, 8, -9, 0])
    # density 1 keeps everything, outliers included
    assert close(sp.magnitude_outliers(x, 1.0, 0.3), x)
    # through the method: base 0, one model with weight 2
    out = run("breadcrumbs", [torch.zeros(10), x], 0, [{"weight": 2.0, "density": 0.5, "gamma": 0.1}])
    assert close(out, 2 * torch.tensor([0, 0, 0, 0, -5, 6, -7, 8, -9, 0.0]))
    # default gamma 0.01 on 10 entries removes no outlier: int(0.1) = 0
    out = run("breadcrumbs", [torch.zeros(10), x], 0, [{"weight": 1.0, "density": 0.5}])
    assert close(out, [0, 0, 0, 0, 0, 6, -7, 8, -9, 10])


# --------------------------------------------------------------------------- DARE

def test_dare_seed_determinism_and_generator_required():
    g = torch.Generator().manual_seed(1)
    b = torch.randn(64, generator=g)
    ms = [b + torch.randn(64, generator=g) for _ in range(2)]
    pm = [{"weight": 1.0, "density": 0.5}] * 2
    for name in ("dare_ties", "dare_linear", "della", "della_linear"):
        a1 = run(name, [b, *ms], 0, pm, seed=7)
        a2 = run(name, [b, *ms], 0, pm, seed=7)
        a3 = run(name, [b, *ms], 0, pm, seed=8)
        assert torch.equal(a1, a2) and not torch.equal(a1, a3)
        with pytest.raises(MergeError, match="generator"):
            run(name, [b, *ms], 0, pm)


def test_dare_rescale_factor_is_l1_norm_ratio():
    g = torch.Generator().manual_seed(2)
    d = torch.randn(1000, generator=g)
    z = torch.zeros(1000)
    # rescale=False: kept entries unchanged, dropped ones exactly 0, about `density` kept
    out = run("dare_linear", [z, d], 0, [{"weight": 1.0, "density": 0.3}], seed=3, rescale=False)
    kept = out != 0
    assert torch.equal(out[kept], d[kept]) and abs(kept.float().mean().item() - 0.3) < 0.05
    # same seed, rescale=True (default): same mask, kept entries times sum|d| / sum|kept d|
    # (mergekit 0.1.5's rescale; close to, but not exactly, the paper's 1/density)
    out_r = run("dare_linear", [z, d], 0, [{"weight": 1.0, "density": 0.3}], seed=3)
    factor = d.abs().sum() / d[kept].abs().sum()
    assert torch.equal(out_r != 0, kept)
    assert torch.allclose(out_r[kept], d[kept] * factor, rtol=1e-6, atol=0)
    assert abs(out_r.abs().sum().item() - d.abs().sum().item()) < 1e-3
    # density 1: nothing dropped, nothing rescaled
    assert close(run("dare_linear", [z, d], 0, [{"weight": 1.0}], seed=3), d)


def test_dare_expected_value_is_the_delta():
    d = torch.linspace(-2, 2, 400)
    z = torch.zeros(400)
    n = 600
    acc = torch.zeros(400)
    for seed in range(n):
        acc += run("dare_linear", [z, d], 0, [{"weight": 1.0, "density": 0.5}], seed=seed)
    mean = acc / n
    # per-entry std of the mean ~ |d| / sqrt(n) <= 0.08; the L1 rescale is ~ 1/density
    assert (mean - d).abs().max() < 0.35
    assert (mean - d).abs().mean() < 0.06


# --------------------------------------------------------------------------- DELLA

def test_della_probabilities_hand():
    x = T(0.1, -0.4, 0.3, 0.2)
    # magnitude ranks 0, 3, 2, 1 of 4 -> r/3 = 0, 1, 2/3, 1/3 -> 0.4 + 0.2 * r/3
    p = sp.della_probabilities(x, 0.5, 0.1)
    assert close(p, [0.4, 0.6, 0.4 + 0.2 * 2 / 3, 0.4 + 0.2 / 3])
    # 2-D: ranked within each row
    p = sp.della_probabilities(torch.tensor([[1.0, -2.0], [3.0, 0.5]]), 0.5, 0.2)
    assert close(p, [[0.3, 0.7], [0.7, 0.3]])


def test_della_probabilities_equal_double_argsort():
    g = torch.Generator().manual_seed(4)
    x = torch.randint(-3, 4, (3, 9, 4), generator=g).float()  # ties; 3-D ranks along dim 1
    r = torch.argsort(torch.argsort(x.abs(), dim=1, stable=True), dim=1).float()
    want = (0.5 - 0.2) + (r / 8) * 2 * 0.2
    assert torch.equal(sp.della_probabilities(x, 0.5, 0.2), want)


def test_della_ranks_by_blocks_of_rows_equal_double_argsort(small_blocks):
    """2-D tensors are ranked a block of rows at a time (16 entries: 2 rows of 9 -> 1 row per block)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randint(-3, 4, (7, 9), generator=g).float()
    r = torch.argsort(torch.argsort(x.abs(), dim=1, stable=True), dim=1).float()
    assert torch.equal(sp.della_probabilities(x, 0.5, 0.2), (0.5 - 0.2) + (r / 8) * 2 * 0.2)


def test_della_keep_frequencies():
    # 4000 rows, each a permutation of magnitudes 1..5: keep rate of rank r is 0.3 + 0.4*r/4
    g = torch.Generator().manual_seed(5)
    x = torch.argsort(torch.rand(4000, 5, generator=g), dim=1).float() + 1
    kept = sp.della_magprune(x, 0.5, 0.2, torch.Generator().manual_seed(6)) != 0
    for r in range(5):
        freq = kept[x == r + 1].float().mean().item()
        assert abs(freq - (0.3 + 0.4 * r / 4)) < 0.03


def test_della_invalid_epsilon_names_the_tensor():
    b = torch.zeros(8)
    m = torch.ones(8)
    with pytest.raises(MergeError, match="layers.0.w.*density"):
        run("della", [b, m], 0, [{"weight": 1.0, "density": 0.5, "epsilon": 0.5}], seed=0, name="layers.0.w")
    # density >= 1 skips the check, as in mergekit
    assert close(run("della", [b, m], 0, [{"weight": 1.0, "epsilon": 0.5}], seed=0), m)


# --------------------------------------------------------------------------- SLERP

def test_slerp_closed_form():
    v0, v1 = T(2, 0), T(0, 3)  # orthogonal: theta = pi/2, sin(theta) = 1
    # t = 0.5: sin(pi/4) v0 + sin(pi/4) v1 (coefficients on the unnormalized tensors)
    assert close(run("slerp", [v0, v1], 0, [{}], t=0.5), [2 / SQ2, 3 / SQ2])
    # t = 1/3: sin(pi/3) v0 + sin(pi/6) v1
    assert close(run("slerp", [v0, v1], 0, [{}], t=1 / 3), [2 * math.sqrt(3) / 2, 1.5])
    # t = 0 -> base, t = 1 -> other; the base may come second
    assert close(run("slerp", [v0, v1], 0, [{}], t=0.0), v0)
    assert close(run("slerp", [v1, v0], 1, [{}], t=1.0), v1)
    # 60 degrees apart: theta = pi/3, t = 0.5 -> sin(pi/6)/sin(pi/3) (u0 + u1)
    u0, u1 = T(1, 0), T(0.5, math.sqrt(3) / 2)
    c = 0.5 / (math.sqrt(3) / 2)
    assert close(run("slerp", [u0, u1], 0, [{}], t=0.5), [c * 1.5, c * math.sqrt(3) / 2])


def test_slerp_lerp_fallback_and_zero():
    v = T(1, 2, 3)
    # parallel (dot of unit vectors 1 > 0.9995): (1-t) v + t (2v) = 1.25 v
    assert close(run("slerp", [v, 2 * v], 0, [{}], t=0.25), 1.25 * v)
    # antiparallel: |dot| = 1 -> lerp too: 0.5 v + 0.5 (-3v) = -v
    assert close(run("slerp", [v, -3 * v], 0, [{}], t=0.5), -v)
    # a zero base counts as norm 1 with dot 0: spherical branch, theta = pi/2
    assert close(run("slerp", [torch.zeros(3), v], 0, [{}], t=0.5), v / SQ2)
    # norms over the whole flattened tensor: a 2-D input behaves like its flattening
    a, b = torch.tensor([[2.0, 0], [0, 0]]), torch.tensor([[0.0, 0], [0, 3]])
    assert close(run("slerp", [a, b], 0, [{}], t=0.5), torch.tensor([[2 / SQ2, 0], [0, 3 / SQ2]]))
    with pytest.raises(MergeError, match="exactly 2"):
        run("slerp", [v, v, v], 0, [{}, {}], t=0.5)
    with pytest.raises(MergeError, match="needs a base"):
        run("slerp", [v, v], None, [{}, {}], t=0.5)
    with pytest.raises(MergeError, match="'t'"):
        run("slerp", [v, v], 0, [{}])


# --------------------------------------------------------------------------- Model Stock

def test_model_stock_hand():
    b = T(1, 1)
    w1, w2 = b + T(1, 0), b + T(1, math.sqrt(3))  # offsets 60 degrees apart: cos = 1/2
    # N = 2: t = 2 cos / (1 + cos) = 2/3; avg = [2, 1 + sqrt3/2]
    # out = 2/3 avg + 1/3 b = [5/3, 1 + sqrt3/3]
    assert close(run("model_stock", [b, w1, w2], 0, [{}, {}]), [5 / 3, 1 + math.sqrt(3) / 3])
    # opposite offsets: cos = -1 -> 1 + (N-1) cos = 0 -> singular -> keep the base
    assert close(run("model_stock", [b, b + T(1, 2), b - T(1, 2)], 0, [{}, {}]), b)
    # filter_wise: row 0 as above (t = 2/3), row 1 orthogonal offsets (cos 0 -> t 0 -> base row)
    B = torch.ones(2, 2)
    W1 = B + torch.tensor([[1.0, 0], [1, 0]])
    W2 = B + torch.tensor([[1.0, math.sqrt(3)], [0, 1]])
    out = run("model_stock", [B, W1, W2], 0, [{}, {}], filter_wise=True)
    assert close(out, torch.tensor([[5 / 3, 1 + math.sqrt(3) / 3], [1, 1]]))
    with pytest.raises(MergeError, match="at least 3"):
        run("model_stock", [b, w1], 0, [{}])


# --------------------------------------------------------------------------- passthrough / dtypes

def test_passthrough():
    x = T(1, -2)
    assert run("passthrough", [x], None, [{}]) is x
    assert close(run("passthrough", [x], None, [{"scale": 2.5}]), [2.5, -5])
    with pytest.raises(MergeError, match="exactly 1"):
        run("passthrough", [x, x], None, [{}, {}])


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_dtype_and_shape_preserved(name, dtype):
    g = torch.Generator().manual_seed(9)
    m = get_method(name)
    n = {"slerp": 2, "nearswap": 2, "arcee_fusion": 2, "nuslerp": 2, "passthrough": 1}.get(name, 4)
    ts = [torch.randn(4, 6, generator=g).to(dtype) for _ in range(n)]
    base_index = 0 if m.base == "required" else None
    pm = {"weight": 0.5} if name != "passthrough" else {}
    if name.startswith(("ties", "dare", "della", "breadcrumbs")):
        pm["density"] = 0.5
    if name in ("slerp", "model_stock", "nearswap", "karcher", "sce", "arcee_fusion", "ram", "ramplus_tl"):
        pm = {}
    params = [{} if i == base_index else dict(pm) for i in range(n)]
    gen = torch.Generator().manual_seed(0) if m.randomized else None
    glob = {"t": 0.3} if name in ("slerp", "nearswap") else {}
    out = m(MergeInputs(ts, base_index, params, gen, "x"), **glob)
    assert out.dtype == dtype and out.shape == (4, 6) and torch.isfinite(out.float()).all()


# --------------------------------------------------------------------------- mergekit fixtures

def _reference():
    meta = json.loads((REF_DIR / "cases.json").read_text())
    return meta, load_file(str(REF_DIR / "tensors.safetensors"))


_META, _TENSORS = _reference()


def test_reference_fixture_provenance():
    assert _META["mergekit_version"] == "0.1.5"
    assert {c["method"] for c in _META["cases"]} == set(EXPECTED)


@pytest.mark.parametrize("case", _META["cases"], ids=lambda c: f"{c['id']}-{c['method']}")
def test_matches_mergekit(case):
    """Deterministic methods: equal to mergekit within 1e-6 (+ float32 reassociation). Randomized ones were run by mergekit
    after torch.manual_seed(seed); the same seed in our generator must give the same masks."""
    m = get_method(case["method"])
    gen = torch.Generator().manual_seed(case["seed"]) if case["seed"] is not None else None
    inputs = MergeInputs([_TENSORS[k] for k in case["inputs"]], case["base_index"], case["per_model"], gen, "ref")
    out = m(inputs, **case["globals"])
    ref = _TENSORS[case["output"]]
    assert out.dtype == ref.dtype and out.shape == ref.shape
    # 1e-6, plus float32 reassociation: mergekit's outputs were recorded on another CPU, and on one with
    # AVX-512 BF16/FP16 (this project's machine since 2026-12) torch's reductions sum in another order
    # (karcher's iterations carry that to 1.4e-5 on a tensor of values up to ~4; model_stock 3.8e-6)
    assert (out - ref).abs().max().item() <= 1e-6 + 1e-5 * ref.abs().max().item()


def test_kth_smallest_radix_select_matches_kthvalue():
    from tsugiki.merging.selection import kth_smallest

    g = torch.Generator().manual_seed(3)
    w = torch.randn(50_001, generator=g).abs()
    w[::7] = 0.25  # many equal values
    w[5] = 0.0
    for m in (1, 2, 7143, 25_000, 50_000, 50_001):
        assert kth_smallest(w, m).item() == torch.kthvalue(w, m).values.item()


def test_rand_threshold_draws_equal_bernoulli():
    from tsugiki.merging.sparsify import _draw

    for p in (0.1, 0.5, 0.9):
        mask = _draw(p, torch.Size([200_003]), torch.Generator().manual_seed(11))
        ref = torch.bernoulli(torch.full((200_003,), p), generator=torch.Generator().manual_seed(11)).bool()
        assert torch.equal(mask, ref)


# --------------------------------------------------------------------------- blockwise, in-place kernels
# The kernels keep their memory low by working block by block and in place (see sparsify.py);
# these checks run them on blocks of a few entries, against whole-tensor references, bit for bit.

@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(sel, "MIN_BLOCK", 16)  # a few hundred entries -> 8 blocks


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit patterns (so -0.0 != 0.0), NaN equal to NaN."""
    nan_a, nan_b = torch.isnan(a), torch.isnan(b)
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(nan_a, nan_b) and torch.equal(
        a.masked_fill(nan_a, 0).view(torch.int32), b.masked_fill(nan_b, 0).view(torch.int32)
    )


def test_blockwise_selection_equals_stable_sort(small_blocks):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-4, 5, (500,), generator=g) * 0.25  # signed, many ties, zeros
    x[7], x[11], x[300] = -0.0, float("inf"), -float("inf")  # infinities: the counting path
    for w in (x, x[:-3]):  # with and without infinities
        mag = w.abs()
        asc = torch.argsort(mag, stable=True)
        desc = torch.argsort(mag, descending=True, stable=True)
        for k in (0, 1, 3, 77, 250, w.numel() - 1, w.numel()):
            want = torch.zeros(w.numel(), dtype=torch.bool)
            want[asc[:k]] = True
            assert torch.equal(sel.smallest_mask(w, k), want)  # signed values rank by magnitude
            assert torch.equal(sel.smallest_mask(mag, k), want)
            want = torch.zeros(w.numel(), dtype=torch.bool)
            want[desc[:k]] = True
            assert torch.equal(sel.largest_mask(w, k), want)
            assert torch.equal(sel.largest_mask(w.double(), k), want)
    for m in (1, 2, 250, 497):
        assert sel.kth_smallest(x[:-3], m).item() == torch.kthvalue(x[:-3].abs(), m).values.item()


def test_blockwise_draws_equal_whole_draw(small_blocks):
    n = 1000
    p = torch.rand(n, generator=torch.Generator().manual_seed(2))
    for prob in (0.3, p):
        whole = torch.rand(n, generator=torch.Generator().manual_seed(11)) < prob
        assert torch.equal(sp._draw(prob, torch.Size([n]), torch.Generator().manual_seed(11)), whole)


def _signed_zero_case(n_models: int):
    """Tensors with signed zeros, zero deltas and mixed signs, to pin the result bit for bit."""
    g = torch.Generator().manual_seed(n_models)
    base = torch.randint(-2, 3, (400,), generator=g) * 0.5
    base[::5] = -0.0
    models = [base + torch.randint(-2, 3, (400,), generator=g) * 0.3 for _ in range(n_models)]
    return base, models


def _consensus_reference(base, models, weights, normalize, lam):
    """TIES consensus in its whole-tensor form (mergekit's; tsugiki's before the blockwise kernel)."""
    w = torch.tensor(weights, dtype=base.dtype)
    deltas = torch.stack([(m - base) * w[k] for k, m in enumerate(models)])
    elected = torch.where(deltas.sum(dim=0) >= 0, 1.0, -1.0)
    kept = deltas * elected > 0
    mixed = (deltas * kept).sum(dim=0)
    if normalize:
        divisor = torch.zeros_like(base)
        for k in range(len(models)):
            divisor += kept[k] * w[k]
        mixed /= divisor.masked_fill(divisor == 0, 1)
    if lam != 1:
        mixed *= lam
    return base + mixed


@pytest.mark.parametrize("n_models", [1, 2, 3])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("weights", [(1.0, 0.7, 2.5), (0.3, -0.6, 1.0), (-1.5, 0.0, 0.2)])
def test_consensus_equals_whole_tensor_form(small_blocks, n_models, normalize, weights):
    base, models = _signed_zero_case(n_models)
    weights = weights[:n_models]
    for lam in (1.0, -0.5):
        out = run("ties", [base, *models], 0, [{"weight": w} for w in weights], normalize=normalize, **{"lambda": lam})
        assert bits_equal(out, _consensus_reference(base, models, weights, normalize, lam))


@pytest.mark.parametrize(
    "name,per_model,globals_,n_models",
    [
        ("ties", {"weight": 0.7, "density": 0.5}, {}, 1),
        ("ties", {"weight": 0.7, "density": 0.5}, {}, 2),
        ("dare_ties", {"weight": 0.7, "density": 0.5}, {}, 1),
        ("dare_linear", {"weight": 0.7, "density": 0.5}, {}, 2),
        ("breadcrumbs_ties", {"weight": 0.7, "density": 0.5, "gamma": 0.1}, {}, 2),
        ("della", {"weight": 0.7, "density": 0.5, "epsilon": 0.1}, {}, 2),
        ("task_arithmetic", {"weight": 0.7}, {}, 1),
        ("slerp", {}, {"t": 0.3}, 1),
    ],
)
def test_kernels_leave_inputs_untouched(small_blocks, name, per_model, globals_, n_models):
    base, models = _signed_zero_case(n_models)
    inputs = [base, *models]
    before = [t.clone() for t in inputs]
    run(name, inputs, 0, [dict(per_model) for _ in models], seed=5, **globals_)
    assert all(bits_equal(t, c) for t, c in zip(inputs, before))


# --------------------------------------------------------------------------- thread count

_THREAD_CASES = {  # method -> (base index, per-model params, global params, number of inputs)
    "linear": (None, {"weight": 0.5}, {}, 3), "task_arithmetic": (0, {"weight": 0.5}, {}, 3),
    "slerp": (0, {}, {"t": 0.3}, 2), "model_stock": (0, {}, {}, 3), "passthrough": (None, {}, {}, 1),
    "nearswap": (0, {}, {"t": 0.01}, 2), "karcher": (None, {}, {}, 3), "sce": (0, {}, {"select_topk": 0.5}, 3),
    "nuslerp": (None, {"weight": 0.5}, {}, 2), "multislerp": (0, {"weight": 0.5}, {}, 3),
    "arcee_fusion": (0, {}, {}, 2), "ram": (0, {}, {}, 3), "ramplus_tl": (0, {}, {}, 3),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_result_independent_of_thread_count(name):
    """Whole-tensor reductions (SLERP's angle, DARE's L1 rescale, Karcher's norms) go through
    tsugiki.merging.reduce, so a merge is bit for bit the same with 1, 2 or 4 intra-op threads (a plain
    x.sum() over this many entries is not)."""
    g = torch.Generator().manual_seed(5)
    base = torch.randn(300, 1200, generator=g)
    ts = [base] + [base + 0.05 * torch.randn(300, 1200, generator=g) for _ in range(3)]
    bi, pm, gl, n = _THREAD_CASES.get(name, (0, {"weight": 0.5, "density": 0.5}, {}, 3))
    m = get_method(name)
    threads = torch.get_num_threads()
    outs = []
    try:
        for k in (1, 2, 4):
            torch.set_num_threads(k)
            gen = torch.Generator().manual_seed(1) if m.randomized else None
            outs.append(m(MergeInputs(ts[:n], bi, [{} if i == bi else dict(pm) for i in range(n)], gen, name), **gl))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(outs[0].view(torch.int32), o.view(torch.int32)) for o in outs[1:])


def test_reductions_match_float64_and_ignore_threads():
    from tsugiki.merging import reduce

    g = torch.Generator().manual_seed(6)
    a, b = torch.randn(1_000_003, generator=g), torch.randn(1_000_003, generator=g)
    threads = torch.get_num_threads()
    got = []
    try:
        for k in (1, 2, 4):
            torch.set_num_threads(k)
            got.append([reduce.total(a), reduce.norm(a), reduce.norm(a, ord=1), reduce.dot(a, b)])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(torch.stack(got[0]), torch.stack(x)) for x in got[1:])
    a64, b64 = a.double(), b.double()
    want = [a64.sum(), a64.norm(), a64.abs().sum(), a64 @ b64]
    scale = [a64.abs().sum(), a64.norm(), a64.abs().sum(), (a64 * b64).abs().sum()]
    for x, w, s in zip(got[0], want, scale):
        assert abs(float(x) - float(w)) <= 1e-5 * float(s)
    small_a, small_b = a[:4000], b[:4000]
    assert torch.equal(reduce.dot(small_a, small_b), torch.dot(small_a, small_b))  # as mergekit computes it



@pytest.mark.parametrize("name, globals_", [("ram", {}), ("ramplus_tl", {"alpha": 1.0}), ("sce", {}),
                                            ("sce", {"select_topk": 0.3}), ("arcee_fusion", {}), ("karcher", {}),
                                            ("multislerp", {}), ("nuslerp", {}), ("model_stock", {}),
                                            ("model_stock", {"filter_wise": True})])
def test_blockwise_kernels_equal_one_block(name, globals_, monkeypatch):
    """ram, ramplus_tl, sce and arcee_fusion go block by block to keep their temporaries small; with
    blocks of 64 entries (rows of 30: two rows per block for arcee's softmax) the result is the one-block
    result: bit for bit where each entry's arithmetic is per entry, within rounding for sce's energies,
    which are summed block by block, and for karcher, the SLERPs and model stock over the whole tensor, whose
    norms and angles are."""
    from tsugiki.merging.methods import _common, arcee_fusion, model_stock

    g = torch.Generator().manual_seed(12)
    base = torch.randn(50, 30, generator=g)
    ts = [base] + [base + 0.1 * torch.randn(50, 30, generator=g) * (torch.rand(50, 30, generator=g) < 0.5) for _ in range(3)]
    ts = ts[:2] if name == "arcee_fusion" else ts[:3] if name == "nuslerp" else ts
    bi = None if name == "karcher" else 0
    pm = [{"weight": 0.3 + 0.2 * k} if "slerp" in name else {} for k in range(len(ts) - (bi is not None))]
    whole = run(name, ts, bi, list(pm), **globals_)
    monkeypatch.setattr(_common, "BLOCK", 64)
    monkeypatch.setattr(arcee_fusion, "BLOCK", 64)
    monkeypatch.setattr(model_stock, "BLOCK", 64)
    small = run(name, ts, bi, list(pm), **globals_)
    if name in ("sce", "karcher", "multislerp", "nuslerp") or name == "model_stock" and not globals_:
        assert close(small, whole, tol=1e-6) and not torch.equal(small, base)
    else:
        assert torch.equal(small.view(torch.int32), whole.view(torch.int32))
