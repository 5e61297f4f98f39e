"""Evolution building blocks without models: bounded spaces, config schema errors, data splits, costs."""

from __future__ import annotations

import math

import pytest

from tsugiki.errors import EvolutionError
from tsugiki.evolution.config import load_config
from tsugiki.evolution.data import check_disjoint, generate, load_pairs
from tsugiki.evolution.kinds.dfs.space import DFSSpace
from tsugiki.evolution.kinds.ps.space import PSSpace
from tsugiki.evolution.optimizers import failure_costs
from tsugiki.evolution.space import Param, SearchSpace


@pytest.mark.parametrize("transform", ["sigmoid", "clip"])
def test_param_bounds_and_roundtrip(transform):
    p = Param("w", 0.1, 0.9, transform=transform)
    for x in (-1e6, -3.0, 0.0, 0.3, 2.0, 1e6):
        assert 0.1 <= p.decode(x) <= 0.9
    for v in (0.2, 0.5, 0.8):
        assert p.decode(p.encode(v)) == pytest.approx(v)
    assert p.decode(p.encode(p.initial)) == pytest.approx(0.5)


def test_space_rejects_bad_params():
    with pytest.raises(EvolutionError, match="twice"):
        SearchSpace.of([Param("a"), Param("a")])
    with pytest.raises(EvolutionError, match="bounds"):
        Param("a", 1.0, 1.0)
    with pytest.raises(EvolutionError, match="outside"):
        Param("a", 0, 1, init=2)


def test_ps_space_groups_become_layer_filters():
    ps = PSSpace("dare_ties", "base", ("a", "b"), {"base": "/m/base", "a": "/m/a", "b": "/m/b"}, num_layers=4, layer_groups=2)
    space = ps.space()
    assert space.dim == 2 * 2 * 3  # models x (weight, density) x (g0, g1, rest)
    values = {n: 0.5 for n in space.names} | {"a.weight.g1": 0.25, "a.weight.rest": 0.75}
    data = ps.recipe_dict(values)
    conds = data["models"][0]["parameters"]["weight"]
    assert [c.get("filter") for c in conds] == ["model.layers.0.", "model.layers.1.", "model.layers.2.", "model.layers.3.", None]
    assert [c["value"] for c in conds] == [0.5, 0.5, 0.25, 0.25, 0.75]
    assert data["base_model"] == "/m/base" and data["seed"] == 0
    ps.recipe(values)  # a valid recipe


def test_dfs_space_path_and_folded_recipe():
    dfs = DFSSpace(("a", "b"), {"a": "/m/a", "b": "/m/b"}, {"a": 2, "b": 2}, repeats=2)
    space = dfs.space()
    assert space.dim == (2 + 2) * 2 + 4
    x0 = space.decode(space.x0())
    assert dfs.path(x0).layers == (("a", 0), ("a", 1))  # the initial mean is model a's own path
    values = {n: -1.0 for n in space.names if n.startswith("use.")}
    values.update({"use.1.a.L1": 1.0, "use.2.b.L0": 1.0, "use.5.a.L1": 1.0,
                   "scale.a.a": 1.0, "scale.a.b": 0.5, "scale.b.a": 2.0, "scale.b.b": 1.0})
    path = dfs.path(values)
    assert path.layers == (("a", 1), ("b", 0), ("a", 1))
    assert path.scales == (1.0, 0.5, 2.0)
    slices = dfs.recipe_dict(path)["slices"]
    assert [s["sources"][0]["layer_range"] for s in slices] == [[1, 2], [0, 1], [1, 2]]
    assert "parameters" not in slices[0]["sources"][0] and "parameters" not in slices[2]["sources"][0]  # P = 1, 1
    assert slices[1]["sources"][0]["parameters"]["scale"][0]["value"] == 2.0  # 1 / 0.5
    with pytest.raises(EvolutionError, match="empty"):
        dfs.path({n: -1.0 for n in space.names})


def test_dfs_fixed_ends():
    dfs = DFSSpace(("a", "b"), {"a": "a", "b": "b"}, {"a": 3, "b": 2}, repeats=1, fixed_model="a", fixed_first=1, fixed_last=1)
    assert dfs.slots() == [("a", 1), ("b", 0), ("b", 1)]
    path = dfs.path({n: -1.0 for n in dfs.space().names})
    assert path.layers == (("a", 0), ("a", 2))


CONFIG = """\
space:
  kind: box
  params: {x: [-1, 1]}
fitness: {function: neg_sphere}
search:
  generations: 2
  populaton: 4
"""


def test_config_errors_name_file_and_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG)
    with pytest.raises(EvolutionError, match=r"c\.yaml:7: search\.populaton: unknown key 'populaton'; did you mean 'population'"):
        load_config(cfg)
    cfg.write_text(CONFIG.replace("populaton: 4", "sigma: -1"))
    with pytest.raises(EvolutionError, match=r"c\.yaml:7: search\.sigma: must be > 0"):
        load_config(cfg)
    cfg.write_text(CONFIG.replace("[-1, 1]", "[1, -1]"))
    with pytest.raises(EvolutionError, match=r"c\.yaml:3: space\.params\.x\.bounds"):
        load_config(cfg)
    cfg.write_text(CONFIG.replace("kind: box", "kind: pss"))
    with pytest.raises(EvolutionError, match=r"c\.yaml:2: space\.kind"):
        load_config(cfg)


def test_generated_splits_are_disjoint_and_overlap_is_refused():
    fit = generate(["arithmetic", "ja_sentences", "copy"], "fitness", None, 0)
    val = generate(["arithmetic", "ja_sentences", "copy"], "validation", None, 0)
    test = generate(["arithmetic", "ja_sentences", "copy"], "test", None, 0)
    prompts = [{p.prompt for p in s} for s in (fit, val, test)]
    assert not (prompts[0] & prompts[1]) and not (prompts[0] & prompts[2]) and not (prompts[1] & prompts[2])
    check_disjoint(fit, val)
    inline = load_pairs({"pairs": [{"prompt": fit[3].prompt, "answer": "x"}]})
    with pytest.raises(EvolutionError, match="disjoint"):
        check_disjoint(fit, inline)


def test_failure_costs_are_worst():
    costs = failure_costs([0.5, None, 0.25, None])
    assert costs[0] == -0.5 and costs[2] == -0.25
    assert costs[1] == costs[3] > max(costs[0], costs[2])
    assert failure_costs([None, None]) == [0.0, 0.0]
    assert all(math.isfinite(c) for c in costs)


def test_weighted_sum_and_named_callables():
    from tsugiki.evolution.fitness import EvalContext, resolve_fitness

    ctx = EvalContext(params={"x": 2.0})
    ws = resolve_fitness("weighted_sum").fn
    terms = [{"function": "neg_sphere", "weight": 0.5}, {"function": "tsugiki.evolution.fitness:neg_sphere", "args": {"center": 1.0}}]
    assert ws(ctx, None, terms=terms) == -0.5 * 4 - 1
    with pytest.raises(EvolutionError, match="no callable 'nope'"):
        resolve_fitness("tsugiki.evolution.fitness:nope")
    from tsugiki.evolution import from_data, make_problem

    cfg = {"space": {"kind": "box", "params": {"x": [0, 1]}}, "fitness": {"function": "neg_spher"}, "search": {}}
    with pytest.raises(EvolutionError, match=r"fitness\.function: unknown fitness function 'neg_spher'; did you mean 'neg_sphere'"):
        make_problem(from_data(cfg), ".")


def test_bad_fitness_arguments_and_unknown_sources_are_refused_before_any_candidate(tmp_path):
    from tsugiki.evolution import from_data, make_problem

    cfg = {"space": {"kind": "box", "params": {"x": [0, 1]}},
           "fitness": {"function": "neg_sphere", "args": {"centre": 1.0}}, "search": {}}
    with pytest.raises(EvolutionError, match=r"fitness\.args: .*'centre'"):
        make_problem(from_data(cfg), ".")
    cfg["fitness"]["args"] = {"center": 1.0}
    cfg["validation"] = {"function": "neg_sphere", "args": {"radius": 2}, "data": {"pairs": [{"prompt": "p", "answer": "a"}]}}
    with pytest.raises(EvolutionError, match=r"validation\.args: .*'radius'"):
        make_problem(from_data(cfg), ".")

    (tmp_path / "a").mkdir()
    ps = {"name": "x", "sources": {"a": str(tmp_path / "a")},
          "space": {"kind": "ps", "method": "linear", "models": ["a", "b"]},
          "fitness": {"function": "neg_sphere"}, "search": {}}
    with pytest.raises(EvolutionError, match=r"space\.models: unknown source 'b' \(known: a"):
        make_problem(from_data(ps), tmp_path).check()


def test_ps_space_searches_method_level_parameters_once():
    """nearswap's t and sce's select_topk belong to the method, not to a model: one searched value (per
    layer group), written to the recipe's top-level parameters, next to the fixed ones."""
    paths = {"base": "/m/base", "a": "/m/a", "b": "/m/b"}
    ps = PSSpace("nearswap", "base", ("a",), paths, num_layers=4, bounds={"t": (0.0, 0.1)})
    assert ps.space().names == ["t"]
    data = ps.recipe_dict({"t": 0.02})
    assert data["parameters"] == {"t": 0.02} and data["models"] == [{"model": "/m/a", "parameters": {}}]
    assert ps.recipe({"t": 0.02}).parameters["t"] == 0.02
    ps = PSSpace("ramplus_tl", "base", ("a", "b"), paths, num_layers=4, layer_groups=2,
                 bounds={"r": (0.0, 1.0)}, fixed={"alpha": 0.5})
    assert ps.space().names == ["r.g0", "r.g1", "r.rest"]
    data = ps.recipe_dict({"r.g0": 0.1, "r.g1": 0.2, "r.rest": 0.3})
    assert data["parameters"]["alpha"] == 0.5
    assert [c["value"] for c in data["parameters"]["r"]] == [0.1, 0.1, 0.2, 0.2, 0.3]
    assert ps.matrix({"r.g0": 0.1, "r.g1": 0.2, "r.rest": 0.3}, "r") == (["(all models)"], ["g0", "g1", "rest"], [[0.1, 0.2, 0.3]])
    # per-model and method-level together: nuslerp's weights per model, multislerp's eps once
    ps = PSSpace("multislerp", "base", ("a", "b"), paths, num_layers=4, bounds={"weight": (0.0, 1.0), "eps": (1e-9, 1e-6)})
    assert sorted(ps.space().names) == ["a.weight", "b.weight", "eps"]
    with pytest.raises(EvolutionError, match="karcher's max_iter is int"):
        PSSpace("karcher", None, ("a", "b"), paths, num_layers=4, bounds={"max_iter": (1, 20)})
    with pytest.raises(EvolutionError, match="searched or fixed"):
        PSSpace("nearswap", "base", ("a",), paths, num_layers=4, bounds={"t": (0.0, 0.1)}, fixed={"t": 0.01})
