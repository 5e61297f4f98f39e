"""The typed evolve config (issue 16): defaults live in the section classes, the plain data a run dir
keeps round-trips, messages keep their file:line voice, and a space kind is one class."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import pytest

import tsugiki
from tsugiki.errors import EvolutionError
from tsugiki.evolution.config import from_data, load_config
from tsugiki.evolution.fitness import FITNESS
from tsugiki.evolution.kinds.dfs.kind import PSDFSKind
from tsugiki.evolution.kinds.ps.kind import PSKind
from tsugiki.evolution.plan import plan_space
from tsugiki.evolution.problems import Problem, make_problem
from tsugiki.evolution.space import Param, SearchSpace
from tsugiki.evolution.space_kind import SPACE_KINDS, KindPlan, SpaceKind

PS = """\
sources: {a: org/a, b: org/b}
space: {kind: ps, models: [a, b], params: {weight: [0, 1], density: {bounds: [0.2, 1], init: 0.5}}}
fitness: {function: neg_sphere}
"""


def test_defaults_are_typed_and_the_written_keys_are_what_the_run_dir_keeps(tmp_path):
    (tmp_path / "c.yaml").write_text(PS)
    config = load_config(tmp_path / "c.yaml")
    space = config.spec.space
    assert isinstance(space, PSKind)
    assert (space.method, space.layer_groups, space.transform, space.merge_seed, space.base_model) == ("dare_ties", 1, "sigmoid", 0, None)
    assert space.params["density"].bounds == (0.2, 1.0) and space.params["density"].init == 0.5
    assert config.spec.search.sigma == 0.5 and config.spec.search.generations == 10 and config.spec.search.device == "cpu"
    # the plain data: the keys written (bounds as mappings of floats), search complete, sources as named
    assert config.space == {"kind": "ps", "models": ["a", "b"],
                            "params": {"weight": {"bounds": [0.0, 1.0]}, "density": {"bounds": [0.2, 1.0], "init": 0.5}}}
    assert config.search == {"seed": 0, "population": None, "sigma": 0.5, "generations": 10, "max_evaluations": None,
                             "timeout": None, "workers": 1, "backend": "local", "threads": 1, "device": "cpu", "cma_options": {}}
    assert config.data["named_as"] == {"a": {"given": "org/a", "where": "sources.a in c.yaml"},
                                       "b": {"given": "org/b", "where": "sources.b in c.yaml"}}
    again = from_data(config.data, source_name="elsewhere.yaml")  # a run dir's config.yaml read back
    assert again.data == config.data and again.fingerprint() == config.fingerprint()
    assert again.spec == config.spec


def test_a_budget_of_evaluations_alone_and_tiny_model_defaults():
    config = from_data({"tiny_models": {"n": 3}, "space": {"kind": "dfs", "models": ["base", "variant_0"]},
                        "fitness": {"function": "neg_sphere"}, "search": {"max_evaluations": 7}})
    assert config.spec.search.generations is None and config.spec.search.max_evaluations == 7
    tiny = config.spec.tiny_models
    assert (tiny.arch, tiny.n, tiny.kind, tiny.seed, tiny.steps, tiny.hidden_size) == ("llama", 3, "finetuned", 0, 20, None)
    assert config.data["tiny_models"] == {"n": 3}
    assert config.spec.space.scale_bounds == (0.5, 1.5) and config.spec.space.repeats == 3


@pytest.mark.parametrize("space, message", [
    ({"kind": "ps", "models": ["a"], "layer_groups": 0}, r"c\.yaml:4: space\.layer_groups: must be >= 1, got 0"),
    ({"kind": "ps", "models": ["a"], "params": {"w": [1, 0]}}, r"c\.yaml:4: space\.params\.w\.bounds: low 1\.0 must be below high 0\.0"),
    ({"kind": "ps", "models": ["a"], "params": {"w": {"bounds": [0, 1], "init": 2}}}, r"space\.params\.w\.init: 2\.0 is outside \[0\.0, 1\.0\]"),
    ({"kind": "ps", "models": ["a"], "modles": ["b"]}, r"space\.modles: unknown key 'modles'; did you mean 'models'\?"),
    ({"kind": "ps"}, r"c\.yaml:4: space: missing required key 'models'"),
    ({"kind": "ps", "models": "a"}, r"space\.models: expected a non-empty list of model names"),
    ({"kind": "dfs", "models": ["a"], "fixed_ends": {"model": "a", "first": -1}}, r"space\.fixed_ends\.first: must be >= 0, got -1"),
    ({"kind": "dfs", "models": ["a"], "scale_bounds": [2, 1]}, r"space\.scale_bounds\.bounds: low 2\.0 must be below high 1\.0"),
    ({"kind": "ps_dfs", "models": ["a"]}, r"space: missing required key 'ps_recipe'"),
    ({"kind": "box", "params": {}}, r"space\.params: a box space needs at least one parameter"),
    ({"kind": "box", "params": {"x": [0, 1]}, "transform": "tanh"}, r"space\.transform: expected 'sigmoid' or 'clip', got 'tanh'"),
    ({"kind": "sdxl_blocks", "models": ["a"], "units": "layers"}, r"space\.units: expected 'blocks' or 'groups', got 'layers'"),
    ({"kind": "psd", "models": ["a"]}, r"c\.yaml:4: space\.kind: expected one of box, dfs, ps, ps_dfs, sdxl_blocks, got 'psd'"),
])
def test_space_errors_name_the_file_line_and_key(space, message):
    lines = {"space": 4, "space.kind": 4}
    with pytest.raises(EvolutionError, match=message):
        from_data({"space": space, "fitness": {"function": "neg_sphere"}}, source_name="c.yaml", lines=lines)


def test_other_sections_keep_their_rules():
    base = {"space": {"kind": "box", "params": {"x": [0, 1]}}, "fitness": {"function": "neg_sphere"}}
    cases = [
        (dict(base, search={"generations": None}), r"search: set generations or max_evaluations"),
        (dict(base, search={"population": 1}), r"search\.population: must be >= 2, got 1"),
        (dict(base, search={"backend": "dask"}), r"search\.backend: expected 'local' or 'ray', got 'dask'"),
        (dict(base, fitness={"args": {}}), r"fitness\.function: expected a fitness function name"),
        (dict(base, validation={"function": "neg_sphere"}), r"validation: missing required key 'data'"),
        (dict(base, fitness={"function": "f", "data": {"pairs": [{"prompt": "p"}]}}), r"fitness\.data\.pairs\[0\]: needs 'prompt'"),
        (dict(base, fitness={"function": "f", "data": {"file": "x", "generator": "copy"}}), r"fitness\.data: expected exactly one of"),
        (dict(base, tiny_models={"arch": "gpt2"}), r"tiny_models\.arch: expected one of llama, mistral, qwen2, got 'gpt2'"),
        (dict(base, tiny_models={}, tiny_vlm={}), r"tiny_vlm: use either tiny_models or tiny_vlm, not both"),
        (dict(base, sources=["a"]), r"sources: expected a mapping, got list"),
        ({"fitness": {"function": "neg_sphere"}}, r"missing required key 'space'"),
    ]
    for data, message in cases:
        with pytest.raises(EvolutionError, match=message):
            from_data(data)


def test_a_wrong_name_gets_the_nearest_one():
    """Every name list answers a typo with its nearest name (tsugiki.registry.did_you_mean), in config
    sections as in the registries."""
    base = {"space": {"kind": "box", "params": {"x": [0, 1]}}, "fitness": {"function": "neg_sphere"}}
    cases = [
        (dict(base, search={"backend": "rey"}), r"search\.backend: expected 'local' or 'ray', got 'rey'; did you mean 'ray'\?$"),
        (dict(base, tiny_models={"arch": "lama"}), r"tiny_models\.arch: expected one of llama, mistral, qwen2, got 'lama'; "
                                                   r"did you mean 'llama'\?$"),
        (dict(base, search={"optimizer": "nsga"}), r"unknown optimizer 'nsga'; did you mean 'nsga2'\?"),
        (dict(base, space={"kind": "bx", "params": {"x": [0, 1]}}), r"space\.kind: expected one of .*, got 'bx'; did you mean 'box'\?$"),
    ]
    for data, message in cases:
        with pytest.raises(EvolutionError, match=message):
            from_data(data)


class _Line(SpaceKind):
    """A kind written in a test: one parameter ``slope`` in [lo, hi]."""

    kind: str = "test_line"
    lo: float = 0.0
    hi: float = 2.0

    def problem(self, config: Any, paths: Mapping[str, str]) -> Problem:
        problem = Problem(config, paths)
        problem.space = self.plan(config, paths, {}).space
        return problem

    def plan(self, config: Any, paths: Mapping[str, str], configs: Mapping[str, Mapping[str, Any]]) -> KindPlan:
        return KindPlan(SearchSpace.of([Param("slope", self.lo, self.hi)]), (("slope", 1),), ("a test kind",))


def test_a_new_space_kind_is_one_class_registered_by_name(tmp_path):
    SPACE_KINDS.register("test_line", _Line)
    try:
        config = from_data({"space": {"kind": "test_line", "hi": 4}, "fitness": {"function": "neg_sphere"},
                            "search": {"population": 4, "generations": 3}})
        assert isinstance(config.spec.space, _Line) and config.spec.space.hi == 4.0
        plan = plan_space(config, {}, tmp_path)
        assert (plan.kind, plan.space.dim, plan.evaluations, plan.notes) == ("test_line", 1, 12, ("a test kind",))
        problem = make_problem(config, tmp_path)
        assert problem.space.names == ["slope"] and problem.evaluate({"slope": 3.0}) == pytest.approx(-9.0)
        with pytest.raises(EvolutionError, match=r"space\.lo: expected a number, got 'x'"):
            from_data({"space": {"kind": "test_line", "lo": "x"}, "fitness": {"function": "neg_sphere"}})
    finally:
        SPACE_KINDS._items.pop("test_line")


def test_kinds_and_fitness_functions_are_registered_in_one_explicit_list_each():
    assert SPACE_KINDS.names() == ["box", "ps", "dfs", "ps_dfs", "sdxl_blocks"]
    assert all(SPACE_KINDS.get(name).model_fields["kind"].default == name for name in SPACE_KINDS)
    assert "unet_output_mse" in FITNESS  # the SDXL kind's fitness, registered with the other built-ins
    root = Path(tsugiki.__file__).parent
    registering = {p.relative_to(root).as_posix() for p in root.rglob("*.py")
                   if re.search(r"\b(SPACE_KINDS|FITNESS)\.register\(", p.read_text(encoding="utf-8"))}
    assert registering == {"evolution/kinds/__init__.py", "evolution/fitness.py"}  # importing a kind registers nothing


def test_ps_dfs_plans_its_ps_model_from_the_recipe_base(tmp_path):
    cfg = {"num_hidden_layers": 2, "hidden_size": 8, "architectures": ["LlamaForCausalLM"]}
    config = from_data({"sources": {"a": "org/a"}, "space": {"kind": "ps_dfs", "models": ["ps", "a"], "repeats": 1,
                        "ps_recipe": {"merge_method": "linear", "base_model": "a", "models": [{"model": "a"}]}},
                        "fitness": {"function": "neg_sphere"}, "search": {"population": 2, "generations": 1}})
    assert isinstance(config.spec.space, PSDFSKind)
    plan = plan_space(config, {"a": cfg}, tmp_path)
    assert plan.notes[0] == "ps: shaped like a (the PS recipe's base model)"
    assert plan.space.dim == 4 + 4  # indicators over 2 + 2 layers (r = 1), then W: 2 x 2
