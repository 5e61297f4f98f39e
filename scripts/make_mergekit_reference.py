"""Generate the mergekit cross-check fixtures in tests/data/mergekit_reference/.

Run with a Python that has mergekit installed (tsugiki itself never imports mergekit):

    /work/mkvenv/bin/python scripts/make_mergekit_reference.py

For small random fp32 tensors (1-D, 2-D and 3-D; a base + 3 models) it calls mergekit's own
registered merge methods (``mergekit.merge_methods.registry.get(name)``, called on one
``TensorGroup``) for every method and a spread of parameter settings, and writes

    tensors.safetensors   inputs ("<set>/<i>") and outputs ("case/<n>")
    cases.json            {"mergekit_version", "torch_version", "cases": [...]}, each case
                          {"id", "method", "inputs": [keys], "base_index", "globals",
                           "per_model": [dict per input, {} for the base], "seed", "output"}

Randomized methods (dare_*, della*) are run after ``torch.manual_seed(seed)``: mergekit draws its
masks from the default CPU generator, so tsugiki given ``torch.Generator().manual_seed(seed)``
must reproduce them exactly (same probabilities, same draw order).
"""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import torch
from mergekit.merge_methods.base import TensorGroup
from mergekit.merge_methods.registry import get
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "mergekit_reference"

tensors: dict[str, torch.Tensor] = {}
cases: list[dict] = []


def add_set(name: str, ts: list[torch.Tensor]) -> list[str]:
    keys = []
    for i, t in enumerate(ts):
        key = f"{name}/{i}"
        tensors[key] = t.to(torch.float32).clone()
        keys.append(key)
    return keys


def run(method: str, keys: list[str], base_index: int | None, globals_: dict, per_model: list[dict], seed: int | None = None):
    """per_model: one dict per input, {} for the base (tsugiki's convention)."""
    m = get(method)
    ts = [tensors[k] for k in keys]
    group = TensorGroup.from_tensors(ts, base_index=base_index, name=f"case{len(cases)}")
    params = dict(globals_)
    names = sorted({n for d in per_model for n in d})
    for n in names:
        params[n] = {i: d[n] for i, d in enumerate(per_model) if i != base_index or n in d}
    if seed is not None:
        torch.manual_seed(seed)
    (out,) = m([group], parameters=params)
    cid = len(cases)
    tensors[f"case/{cid}"] = out.contiguous().clone()
    cases.append(
        dict(id=cid, method=method, inputs=keys, base_index=base_index, globals=globals_, per_model=per_model, seed=seed, output=f"case/{cid}")
    )


def nb(base_index: int, n: int, **kw) -> list[dict]:
    """Per-model dicts for n inputs: kw values are lists over the non-base inputs."""
    out, k = [], 0
    for i in range(n):
        if i == base_index:
            out.append({})
        else:
            out.append({key: vals[k] for key, vals in kw.items()})
            k += 1
    return out


def main() -> None:
    g = torch.Generator().manual_seed(20240601)
    shapes = {"v": (17,), "m": (6, 10), "c": (2, 5, 4)}
    sets = {}
    for s, shape in shapes.items():
        base = torch.randn(shape, generator=g)
        models = [base + 0.1 * torch.randn(shape, generator=g) for _ in range(3)]
        sets[s] = add_set(s, [base, *models])
    # base in the middle of the list (index 2)
    b = torch.randn(6, 10, generator=g)
    mid = add_set("mid", [b + 0.1 * torch.randn(6, 10, generator=g), b + 0.1 * torch.randn(6, 10, generator=g), b, b + 0.1 * torch.randn(6, 10, generator=g)])
    # slerp specials: near-parallel, antiparallel, zero base, orthogonal-ish large
    x = torch.randn(6, 10, generator=g)
    par = add_set("par", [x, 1.5 * x + 1e-4 * torch.randn(6, 10, generator=g)])
    anti = add_set("anti", [x, -2 * x])
    zero = add_set("zero", [torch.zeros(17), torch.randn(17, generator=g)])
    # model_stock: opposing offsets (cos < 0) and singular denominator (cos = -1, two models)
    mb = torch.randn(6, 10, generator=g)
    d = torch.randn(6, 10, generator=g)
    opp = add_set("opp", [mb, mb + d, mb - 0.5 * d + 0.3 * torch.randn(6, 10, generator=g)])
    sing = add_set("sing", [mb, mb + d, mb - d])

    W3 = [0.5, 0.3, 0.8]
    for s, keys in sets.items():
        n = len(keys)
        # linear: the base is an ordinary weighted input
        for normalize in (True, False):
            run("linear", keys, None, {"normalize": normalize}, [{"weight": w} for w in (0.4, 0.2, 0.3, 0.6)])
        run("linear", keys[1:], None, {}, [{"weight": w} for w in (1.0, -0.5, 2.0)])
        # task arithmetic
        run("task_arithmetic", keys, 0, {}, nb(0, n, weight=W3))
        run("task_arithmetic", keys, 0, {"normalize": True, "lambda": 0.7}, nb(0, n, weight=[1.0, -0.4, 0.6]))
        # ties
        run("ties", keys, 0, {}, nb(0, n, weight=W3))
        run("ties", keys, 0, {}, nb(0, n, weight=W3, density=[0.3, 0.5, 0.7]))
        run("ties", keys, 0, {"normalize": False, "int8_mask": True, "lambda": 1.3}, nb(0, n, weight=W3, density=[0.2, 0.6, 0.9]))
        run("ties", keys, 0, {"rescale": True}, nb(0, n, weight=[1.0, -0.7, 0.4], density=[0.4, 0.4, 0.1]))
        # breadcrumbs
        for method in ("breadcrumbs", "breadcrumbs_ties"):
            run(method, keys, 0, {}, nb(0, n, weight=W3))
            run(method, keys, 0, {}, nb(0, n, weight=W3, density=[0.5, 0.6, 0.7]))
            run(method, keys, 0, {"normalize": True}, nb(0, n, weight=W3, density=[0.5, 0.8, 0.3], gamma=[0.1, 0.2, 0.05]))
            run(method, keys, 0, {"rescale": True, "lambda": 0.5}, nb(0, n, weight=W3, density=[0.95, 0.9, 0.6], gamma=[0.1, 0.15, 0.3]))
        # slerp (base first and base second)
        for t in (0.0, 0.3, 0.5, 0.75, 1.0):
            run("slerp", keys[:2], 0, {"t": t}, [{}, {}])
        run("slerp", keys[:2], 1, {"t": 0.3}, [{}, {}])
        # model stock
        for fw in (False, True):
            run("model_stock", keys, 0, {"filter_wise": fw}, [{}] * n)
            run("model_stock", keys[:3], 0, {"filter_wise": fw}, [{}] * 3)
        # passthrough
        run("passthrough", keys[1:2], None, {}, [{}])
        run("passthrough", keys[1:2], None, {}, [{"scale": 2.5}])
        # randomized: same seed on both sides -> identical masks
        run("dare_ties", keys, 0, {}, nb(0, n, weight=W3, density=[0.5, 0.3, 0.7]), seed=1)
        run("dare_ties", keys, 0, {"normalize": True, "rescale": False}, nb(0, n, weight=W3, density=[0.5, 1.0, 0.2]), seed=2)
        run("dare_linear", keys, 0, {}, nb(0, n, weight=W3, density=[0.5, 0.3, 0.7]), seed=3)
        run("dare_linear", keys, 0, {"lambda": 2.0}, nb(0, n, weight=W3, density=[0.0, 1.0, 0.4]), seed=4)
        run("dare_linear", keys, 0, {}, nb(0, n, weight=W3), seed=5)  # density 1: no drop
        run("della", keys, 0, {}, nb(0, n, weight=W3, density=[0.5, 0.4, 0.6], epsilon=[0.1, 0.2, 0.3]), seed=6)
        run("della", keys, 0, {"rescale": False, "normalize": False}, nb(0, n, weight=W3, density=[0.5, 0.4, 0.6]), seed=7)
        run("della_linear", keys, 0, {}, nb(0, n, weight=W3, density=[0.7, 0.3, 0.5], epsilon=[0.05, 0.1, 0.2]), seed=8)
        run("della_linear", keys, 0, {}, nb(0, n, weight=W3), seed=9)  # density 1: no drop

    # base not first
    for method, extra in (("task_arithmetic", {}), ("ties", {"density": [0.5, 0.5, 0.5]}), ("breadcrumbs_ties", {"density": [0.5, 0.6, 0.7], "gamma": [0.1, 0.1, 0.1]})):
        run(method, mid, 2, {}, nb(2, 4, weight=W3, **extra))
    run("dare_ties", mid, 2, {}, nb(2, 4, weight=W3, density=[0.5, 0.5, 0.5]), seed=10)
    run("della", mid, 2, {}, nb(2, 4, weight=W3, density=[0.5, 0.5, 0.5]), seed=11)
    run("model_stock", mid, 2, {"filter_wise": True}, [{}] * 4)
    run("slerp", mid[1:3], 1, {"t": 0.4}, [{}, {}])
    for keys in (par, anti, zero):
        for t in (0.25, 0.5):
            run("slerp", keys, 0, {"t": t}, [{}, {}])
    for keys in (opp, sing):
        for fw in (False, True):
            run("model_stock", keys, 0, {"filter_wise": fw}, [{}] * 3)

    # nearswap (base + one model; base first and second), on the sets above: no new random draws, so
    # the cases before keep their inputs and outputs
    for s, keys in sets.items():
        for t in (0.0, 0.001, 0.05, 0.2, 5.0):
            run("nearswap", keys[:2], 0, {"t": t}, [{}, {}])
        run("nearswap", [keys[2], keys[0]], 1, {"t": 0.05}, [{}, {}])
    for keys in (par, zero):
        run("nearswap", keys, 0, {"t": 0.01}, [{}, {}])

    # karcher (every input counts equally; a base is an ordinary input): defaults, more iterations, a
    # loose tol that stops early, one input, base-marked input, near-parallel and antiparallel pairs, a zero
    for s, keys in sets.items():
        run("karcher", keys, None, {}, [{}] * len(keys))
        run("karcher", keys[1:], None, {"max_iter": 50, "tol": 1e-7}, [{}] * 3)
        run("karcher", keys[:2], None, {"max_iter": 2, "tol": 1e-2}, [{}, {}])
        run("karcher", keys, 0, {}, [{}] * len(keys))
    run("karcher", sets["m"][1:2], None, {}, [{}])
    for keys in (par, anti, zero):
        run("karcher", keys, None, {}, [{}, {}])

    # sce (select by cross-model variance, weight by task-vector energy, erase minority signs)
    for s, keys in sets.items():
        for topk in (1.0, 0.5, 0.3, 0.0):
            run("sce", keys, 0, {"select_topk": topk}, [{}] * len(keys))
        run("sce", keys[:3], 0, {"select_topk": 0.7, "int8_mask": True}, [{}] * 3)
        run("sce", keys[:2], 0, {}, [{}, {}])
    run("sce", mid, 2, {"select_topk": 0.6}, [{}] * 4)
    run("sce", sets["m"][:1], 0, {}, [{}])  # the base alone
    run("sce", sing, 0, {}, [{}] * 3)  # opposite task vectors: every sign split

    # nuslerp (two models, t = w2 / (w1 + w2); with a base their task vectors; whole tensor, rows or columns)
    for s, keys in sets.items():
        for layout in ({}, {"nuslerp_flatten": False}, {"nuslerp_flatten": False, "nuslerp_row_wise": True}):
            run("nuslerp", keys[1:3], None, layout, [{"weight": 0.3}, {"weight": 0.7}])
            run("nuslerp", keys[:3], 0, layout, nb(0, 3, weight=[1.0, 0.5]))
        run("nuslerp", keys[:3], 0, {"nuslerp_row_wise": True}, nb(0, 3, weight=[2.0, -0.5]))  # flatten wins
        run("nuslerp", keys[1:3], None, {}, [{"weight": 1.0}, {"weight": -1.0}])  # zero sum: t = 0.5
    run("nuslerp", mid[1:4], 1, {"nuslerp_flatten": False}, [{"weight": 0.4}, {}, {"weight": 0.6}])
    for keys in (par, anti, zero):
        run("nuslerp", keys, None, {"nuslerp_flatten": False}, [{"weight": 0.5}, {"weight": 0.5}])
        run("nuslerp", keys, None, {}, [{"weight": 0.2}, {"weight": 0.8}])

    # multislerp (any number of models on the hypersphere; with a base their task vectors)
    for s, keys in sets.items():
        run("multislerp", keys[1:], None, {}, [{"weight": w} for w in (0.5, 0.3, 0.8)])
        run("multislerp", keys, 0, {}, nb(0, 4, weight=[0.5, 0.3, 0.8]))
        run("multislerp", keys, 0, {"normalize_weights": False}, nb(0, 4, weight=[0.2, 0.3, 0.4]))
        run("multislerp", keys[1:3], None, {"eps": 1e-4}, [{"weight": 1.0}, {"weight": 2.0}])
    run("multislerp", mid, 2, {}, nb(2, 4, weight=[1.0, 1.0, 1.0]))
    run("multislerp", sets["m"][1:2], None, {}, [{"weight": 0.5}])  # one model: itself
    run("multislerp", sets["m"][:2], 0, {}, [{}, {"weight": 0.5}])  # base + one model: the model
    run("multislerp", anti, None, {}, [{"weight": 2.0}, {"weight": 1.0}])  # antiparallel, |mean| = 1/3
    run("multislerp", anti, None, {}, [{"weight": 1.0}, {"weight": 1.0}])  # mean direction 0: linear
    run("multislerp", par, None, {}, [{"weight": 0.5}, {"weight": 0.5}])

    # arcee_fusion, ram, ramplus_tl on task vectors that are sparse (each model changes its own elements,
    # some shared, some below ram's epsilon) and on a larger tensor for arcee_fusion's quartiles
    sb = torch.randn(8, 12, generator=g)
    sparse = [sb]
    for density in (0.3, 0.5, 0.2):
        keep = (torch.rand(8, 12, generator=g) < density).float()
        tiny = (torch.rand(8, 12, generator=g) < 0.1).float() * 3e-6  # changed, but below epsilon 1e-5
        sparse.append(sb + 0.2 * torch.randn(8, 12, generator=g) * keep + tiny * (1 - keep))
    sp = add_set("sparse", sparse)
    lb = torch.randn(40, 50, generator=g)
    large = add_set("large", [lb, lb + 0.05 * torch.randn(40, 50, generator=g) * (torch.rand(40, 50, generator=g) < 0.5)])
    for keys in (*sets.values(), sp, large, par, zero):
        run("arcee_fusion", keys[:2], 0, {}, [{}, {}])
    run("arcee_fusion", [sp[2], sp[0]], 1, {}, [{}, {}])
    for keys in (*sets.values(), sp):
        run("ram", keys, 0, {}, [{}] * len(keys))
        run("ramplus_tl", keys, 0, {}, [{}] * len(keys))
    for eps in (1e-6, 0.05):
        run("ram", sp, 0, {"epsilon": eps}, [{}] * 4)
        run("ramplus_tl", sp, 0, {"epsilon": eps}, [{}] * 4)
    run("ramplus_tl", sp, 0, {"r": 0.5, "alpha": 1.5}, [{}] * 4)
    run("ramplus_tl", sp[:2], 0, {"r": 1.0}, [{}] * 2)  # one model: every change unique, no sharing
    run("ram", [sp[1], sp[2], sp[0], sp[3]], 2, {}, [{}] * 4)
    run("ramplus_tl", [sp[1], sp[2], sp[0], sp[3]], 2, {"alpha": 0.5}, [{}] * 4)
    run("ram", sp[:1], 0, {}, [{}])  # the base alone
    run("ramplus_tl", sing, 0, {}, [{}] * 3)

    for c in cases:  # JSON cannot hold inf/nan; nothing here should produce them
        assert torch.isfinite(tensors[c["output"]]).all(), c
    OUT.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(OUT / "tensors.safetensors"), metadata={"mergekit_version": version("mergekit")})
    meta = {
        "generator": "scripts/make_mergekit_reference.py",
        "mergekit_version": version("mergekit"),
        "torch_version": torch.__version__,
        "rng": "randomized cases: torch.manual_seed(seed) before the mergekit call (default CPU generator)",
        "cases": cases,
    }
    (OUT / "cases.json").write_text(json.dumps(meta, indent=1) + "\n")
    size = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"{len(cases)} cases, mergekit {meta['mergekit_version']}, {size / 1024:.1f} KiB -> {OUT}")


if __name__ == "__main__":
    main()
