"""Recipe loading, validation, dumping and parameter resolution (mergekit 0.1.5 semantics)."""

from __future__ import annotations

import dataclasses
import math
import os
import warnings

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tsugiki.errors import RecipeError
from tsugiki.merging.methods.base import MergeMethod, Param
from tsugiki.merging.parameters import Conditional, layer_t, resolve_value
from tsugiki.merging.recipe import ModelEntry, Recipe, RecipeWarning, Slice, SliceSource, load_recipe, resolve_params
from tsugiki.registry import Registry
from helpers import TEST_DATA

DATA = TEST_DATA / "recipes"


def _kernel(inputs, **kw):  # pragma: no cover - never called here
    raise AssertionError


def _gta(name, normalize, rescale, extra=()):
    return MergeMethod(
        name,
        _kernel,
        (
            Param("weight", per_model=True),
            Param("density", 1.0, per_model=True),
            *extra,
            Param("normalize", normalize, kind=bool),
            Param("rescale", rescale, kind=bool),
            Param("lambda", 1.0),
        ),
        base="required",
    )


# Stand-ins mirroring mergekit's parameter specs; the real registry is tsugiki.merging.methods.
TEST_METHODS: Registry[MergeMethod] = Registry("merge method")
for _m in (
    MergeMethod("linear", _kernel, (Param("weight", per_model=True), Param("normalize", True, kind=bool))),
    _gta("task_arithmetic", False, False),
    _gta("ties", True, False),
    _gta("dare_ties", False, True),
    _gta("dare_linear", False, True),
    _gta("breadcrumbs", False, False, (Param("gamma", 0.01, per_model=True),)),
    _gta("breadcrumbs_ties", False, False, (Param("gamma", 0.01, per_model=True),)),
    _gta("della", True, True, (Param("epsilon", 0.15, per_model=True),)),
    _gta("della_linear", False, True, (Param("epsilon", 0.15, per_model=True),)),
    MergeMethod("slerp", _kernel, (Param("t"),), base="required", min_models=2, max_models=2),
    MergeMethod("model_stock", _kernel, (Param("filter_wise", False, kind=bool),), base="required", min_models=3),
    MergeMethod("passthrough", _kernel, (Param("scale", None, per_model=True),), max_models=1),
    MergeMethod("choice", _kernel, (Param("mode", "a", kind=str), Param("k", 1, kind=int), Param("flag", False, kind=bool))),
):
    TEST_METHODS.register(_m.name, _m)
M = TEST_METHODS.get


def load(text, **kw):
    return load_recipe(text, source_name="r.yaml", methods=TEST_METHODS, **kw)


def error_of(text) -> str:
    with pytest.raises(RecipeError) as ei:
        load(text)
    return str(ei.value)


# ---------------------------------------------------------------------------------------------
# examples


EXAMPLES = sorted(DATA.glob("*.yaml"))


def test_examples_exist():
    assert len(EXAMPLES) >= 6


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads_and_round_trips(path):
    r = load_recipe(path, methods=TEST_METHODS)
    assert r.source_name == str(path)
    text = r.to_yaml()
    r2 = load_recipe(text, methods=TEST_METHODS)
    assert r2 == r
    assert r2.to_yaml() == text
    assert Recipe.from_dict(yaml.safe_load(path.read_text()), methods=TEST_METHODS) == r
    assert load_recipe(str(path), methods=TEST_METHODS) == r  # str path too


def test_example_with_real_registry_if_present():
    methods = pytest.importorskip("tsugiki.merging.methods")
    if not hasattr(methods, "get_method"):
        pytest.skip("method registry not written yet")
    for path in EXAMPLES:
        load_recipe(path)


def test_slerp_example_fields():
    r = load_recipe(DATA / "slerp_gradient.yaml", methods=TEST_METHODS)
    assert r.merge_method == "slerp" and r.models is None and r.dtype == "bfloat16"
    assert len(r.slices) == 1 and r.slices[0].num_layers == 32
    assert r.parameters["t"] == (
        Conditional((0, 0.5, 0.3, 0.7, 1), "self_attn"),
        Conditional((1, 0.5, 0.7, 0.3, 0), "mlp"),
        Conditional(0.5),
    )
    assert r.model_refs() == ["OpenPipe/mistral-ft-optimized-1218", "mlabonne/NeuralHermes-2.5-Mistral-7B"]


def test_other_example_fields():
    d = load_recipe(DATA / "della_slices.yaml", methods=TEST_METHODS)
    assert d.out_dtype == "float16" and d.seed == 7 and d.chat_template == "chatml" and d.name == "base-chat-della"
    assert d.slices[0].sources[1].layer_range == (0, 16)
    assert d.model_refs() == ["/data/models/base@main", "/data/models/chat"]
    b = load_recipe(DATA / "breadcrumbs.yaml", methods=TEST_METHODS)
    assert b.tokenizer_source == "a/model"
    assert b.model_refs() == ["base/model", "a/model", "b/model"]
    assert b.model_refs(include_tokenizer=True) == ["base/model", "a/model", "b/model"]
    ms = load_recipe(DATA / "model_stock.yaml", methods=TEST_METHODS)
    assert ms.model_refs()[0] == "meta-llama/Meta-Llama-3-8B"
    assert [s.model for s in ms.sources()][-1] == "meta-llama/Meta-Llama-3-8B"  # base appended
    p = load_recipe(DATA / "passthrough_upscale.yaml", methods=TEST_METHODS)
    assert [s.num_layers for s in p.slices] == [24, 24] and p.model_refs() == ["./models/mistral-7b"]


# ---------------------------------------------------------------------------------------------
# value resolution


@pytest.mark.parametrize(
    "setting,t,expected",
    [
        ((0, 0.5, 1), 0.25, 0.25),
        ((0, 0.5, 1), 0.0, 0.0),
        ((0, 0.5, 1), 1.0, 1.0),
        ((0, 0.5, 1), 0.75, 0.75),
        ((0.0, 1.0), 0.3, 0.3),
        ((1, 0.7, 0.1), 0.75, 0.4),  # scaled 1.5 -> halfway between 0.7 and 0.1
        ((0, 0.5, 0.3, 0.7, 1), 0.6, 0.46),  # scaled 2.4 -> 0.3 + 0.4 * (0.7 - 0.3)
        ((5,), 0.9, 5),
        (0.7, 0.5, 0.7),
        ((), 0.5, None),
        ((True, False), 0.4, True),  # non-numeric: index int(t * (n - 1))
        ((True, False), 1.0, False),
        (("a", "b", "c"), 0.99, "b"),
    ],
)
def test_resolve_value_gradient(setting, t, expected):
    got = resolve_value(setting, "model.layers.0.mlp.up_proj.weight", t)
    if isinstance(expected, float):
        assert got == pytest.approx(expected, abs=1e-12)
    else:
        assert got == expected


def test_resolve_value_conditionals_and_kinds():
    s = (Conditional((0, 1), "self_attn"), Conditional(0.25, "mlp"), Conditional(0.5))
    assert resolve_value(s, "model.layers.3.self_attn.q_proj.weight", 0.5) == 0.5
    assert resolve_value(s, "model.layers.3.self_attn.q_proj.weight", 0.2) == pytest.approx(0.2)
    assert resolve_value(s, "model.layers.3.mlp.up_proj.weight", 0.2) == 0.25
    assert resolve_value(s, "lm_head.weight", 0.2) == 0.5
    assert resolve_value((Conditional(1, "mlp"),), "lm_head.weight", 0.2) is None  # falls through
    assert resolve_value((Conditional(1, "*"),), "", 0.0) == 1
    assert resolve_value((Conditional(1, "mlp"),), "", 0.0) is None  # empty name matches no filter
    assert resolve_value(Conditional(3), "x", 0) == 3
    assert resolve_value(({"filter": "x", "value": 2},), "ax", 0) == 2  # plain dicts work too
    # kinds: pydantic lax coercion, as mergekit
    assert resolve_value("1e-3", "x", 0, kind=float) == 0.001
    assert resolve_value(("0", "1e-3"), "x", 1.0, kind=float) == 0.001
    assert resolve_value((0, 1), "x", 0.9, kind=bool) is False  # bools select, never interpolate
    assert resolve_value((1, 3), "x", 0.5, kind=int) == 2
    with pytest.raises(ValueError):
        resolve_value((1, 2), "x", 0.5, kind=int)  # 1.5 is not an int
    with pytest.raises(ValueError):
        resolve_value(0.5, "x", 1.5)
    assert layer_t(0, 32) == 0 and layer_t(31, 32) == 1 and layer_t(0, 1) == 1 and layer_t(1, 3) == 0.5


def test_resolve_params_precedence_models_form():
    r = load(
        """
merge_method: ties
base_model: base
models:
  - model: base
  - model: a
    parameters:
      weight: [0, 1]
      density: {filter: mlp, value: 0.3}
  - model: b
    parameters: {density: []}
parameters:
  weight: 0.5
  density: 0.9
  normalize: false
"""
    )
    g, per = resolve_params(M("ties"), r, None, "model.layers.2.mlp.down_proj.weight", 0.25)
    assert g == {"normalize": False, "rescale": False, "lambda": 1.0}
    assert per == [{}, {"weight": 0.25, "density": 0.3}, {"weight": 0.5, "density": 0.9}]
    # a's density filter misses attention -> falls through to the global 0.9
    _, per = resolve_params(M("ties"), r, None, "model.layers.2.self_attn.q_proj.weight", 1.0)
    assert per[1] == {"weight": 1.0, "density": 0.9}
    # explicit model order + input names
    _, per = resolve_params(M("ties"), r, None, "out", 0.0, models=["a", "base"], input_names=["x.mlp", "y"])
    assert per == [{"weight": 0.0, "density": 0.3}, {}]


def test_resolve_params_slices_and_defaults():
    r = load_recipe(DATA / "della_slices.yaml", methods=TEST_METHODS)
    g, per = resolve_params(M("della"), r, 0, "model.layers.3.mlp.up_proj.weight", layer_t(3, 16))
    assert g == {"normalize": False, "rescale": True, "lambda": 1.1}
    assert per[0] == {}  # base
    assert per[1] == pytest.approx({"weight": 0.2 + 0.6 * 3 / 15, "density": 0.6, "epsilon": 0.1})
    g, per = resolve_params(M("della"), r, -1, "lm_head.weight", 0.0)
    assert per[1] == {"weight": 0.8, "density": 1.0, "epsilon": 0.15}  # slice 1 has no slice params


def test_resolve_params_base_ignored_and_required():
    r = load("merge_method: linear\nbase_model: b\nmodels:\n  - model: a\n    parameters: {weight: 2}\nparameters: {weight: 1}\n")
    _, per = resolve_params(M("linear"), r, None, "w", 0.0)
    assert [s.model for s in r.sources()] == ["a", "b"]
    assert per == [{"weight": 2}, {"weight": 1}]  # linear ignores the base: it is an ordinary input
    r = load("merge_method: linear\nmodels:\n  - model: a\n    parameters:\n      weight: {filter: mlp, value: 1}\n")
    with pytest.raises(RecipeError, match=r"^r.yaml:3: missing required parameter 'weight' for model 'a', tensor 'attn.w'"):
        resolve_params(M("linear"), r, None, "attn.w", 0.0)
    r = load("merge_method: slerp\nbase_model: a\nmodels: [{model: a}, {model: b}]\nparameters:\n  t: [{filter: mlp, value: 0.3}]\n")
    with pytest.raises(RecipeError, match="missing required parameter 't' for tensor 'embed'"):
        resolve_params(M("slerp"), r, None, "embed", 0.0)
    g, per = resolve_params(M("slerp"), r, None, "mlp.w", 0.0)
    assert g == {"t": 0.3} and per == [{}, {}]


def test_resolve_params_int_gradient_error():
    r = load("merge_method: choice\nmodels: [{model: a}]\nparameters: {k: [1, 2], mode: [x, y]}\n")
    with pytest.raises(RecipeError, match="parameter 'k'.*not a valid int"):
        resolve_params(M("choice"), r, None, "w", 0.5)
    g, _ = resolve_params(M("choice"), r, None, "w", 1.0)
    assert g == {"k": 2, "mode": "y", "flag": False}


# ---------------------------------------------------------------------------------------------
# errors carry file:line and name the key


@pytest.mark.parametrize(
    "text,line,fragment",
    [
        ("merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1}\nbogus: 1\n", 5, "bogus"),
        ("merge_method: linaer\nmodels:\n  - model: a\n", 1, "did you mean 'linear'"),
        ("merge_method: ties\nbase_model: b\nmodels:\n  - model: a\n    parameters:\n      wieght: 1\n", 6, "did you mean 'weight'"),
        ("merge_method: linear\nmodels:\n  - model: a\n    parmeters: {weight: 1}\n", 4, "unknown key 'parmeters'"),
        (
            "merge_method: passthrough\nslices:\n  - sources:\n      - model: a\n        layer_range: [8, 4]\n",
            5,
            "slices[0].sources[0].layer_range: end (4) must be greater than start (8)",
        ),
        (
            "merge_method: slerp\nbase_model: a\nslices:\n  - sources:\n      - model: a\n        layer_range: [0, 8]\n"
            "      - model: b\n        layer_range: [0, 9]\nparameters: {t: 0.5}\n",
            8,
            "same number of layers",
        ),
        ("merge_method: linear\nmodels:\n  - model: a\n    parameters:\n      weight: yes-please\n", 5, "weight"),
        ("merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1}\nmodels: []\n", 5, "duplicate key 'models'"),
        ("merge_method: linear\nmodels:\n  - model: [a\n", 4, "invalid YAML"),
        ("merge_method: linear\nmodels:\n  - model: a+l/x+l/y\n    parameters: {weight: 1}\n", 3, "more than one '+'"),
        ("merge_method: linear\nmodels:\n  - model: a+\n    parameters: {weight: 1}\n", 3, "empty model or adapter"),
        ("merge_method: linear\nmodels:\n  - model: {model: a, lora: b+c}\n    parameters: {weight: 1}\n", 3,
         "give the adapter in 'lora' alone"),
        ("merge_method: linear\nmodules:\n  text: {}\n", 2, "'modules'"),
        ("merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1}\ntokenizer_source: [union]\n", 5,
         "a model reference must be a string"),
        (
            "merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1}\ntokenizer:\n  source: base\n  tokens:\n    x: {source: b}\n",
            8,
            "token rule names model 'b', which the recipe does not merge",
        ),
        ("merge_method: ties\nmodels:\n  - model: a\n    parameters: {weight: 1}\n", 1, "requires a 'base_model'"),
        ("merge_method: linear\nmodels:\n  - model: a\n", 3, "missing required parameter 'weight' for model 'a'"),
        ("merge_method: linear\nmodels:\n  - model: a\n  - model: a\n    parameters: {weight: 1}\n", 4, "listed twice"),
        ("merge_method: linear\nmodels: []\n", 1, "exactly one of 'models' or 'slices'"),
        ("merge_method: linear\ndtype: bf16\nmodels:\n  - model: a\n    parameters: {weight: 1}\n", 2, "unknown dtype"),
        ("merge_method: linear\nseed: 1.5\nmodels:\n  - model: a\n    parameters: {weight: 1}\n", 2, "seed"),
        ("merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: !!python/object:os.system x}\n", 4, "invalid YAML value"),
        ("merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: .inf}\n", 4, "finite"),
        ("merge_method: linear\nmodels:\n  - model: a\n    parameters:\n      weight: [0.5, {value: 1}]\n", 5, "a list value"),
        ("merge_method: linear\nmodels:\n  - model: a\n    parameters:\n      weight: [{filter: x, valeu: 1}]\n", 5, "'valeu'"),
        ("merge_method: slerp\nmodels: [{model: a}, {model: b}]\nbase_model: a\nparameters: {t: 0.5}\n"
         "slices:\n  - sources: [{model: a, layer_range: [0, 1]}]\n", 5, "not both"),
        (
            "merge_method: ties\nbase_model: c\nslices:\n  - sources:\n      - model: a\n        layer_range: [0, 8]\n"
            "        parameters: {weight: 1}\n",
            2,
            "must be one of the slice's sources",
        ),
        ("merge_method: model_stock\nbase_model: b\nmodels: [{model: a}]\n", 3, "at least 3"),
        ("merge_method: linear\nslices:\n  - sources: [{model: a, layer_range: [0, 2]}]\n    residual_weight: 0.5\n", 4, "residual_weight"),
        ("a: &x [*x]\n", 1, "recursive"),
        ("merge_method: linear\n<<: {models: []}\n", 2, "merge keys"),
        ("merge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}]\n---\nx: 1\n", 3, "invalid YAML"),
        ("[1, 2]\n", 1, "must be a mapping"),
        ("", 1, "empty"),
        ("merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 2020-13-45}\n", 4, "invalid YAML value"),
    ],
)
def test_error_lines(text, line, fragment):
    msg = error_of(text)
    assert msg.startswith(f"r.yaml:{line}: "), msg
    assert fragment in msg, msg


def test_error_names_path():
    msg = error_of("merge_method: linear\nmodels:\n  - model: a\n    parameters:\n      weight: 1\n  - model: 3\n")
    assert msg.startswith("r.yaml:6: models[1].model: a model reference must be a string"), msg


def test_from_dict_errors_and_file_errors(tmp_path):
    with pytest.raises(RecipeError, match=r"^<dict>: models\[0\]\.parameters\.weight: "):
        Recipe.from_dict({"merge_method": "linear", "models": [{"model": "a", "parameters": {"weight": "x"}}]}, methods=TEST_METHODS)
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.yaml", methods=TEST_METHODS)
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(str(tmp_path / "missing.yml"), methods=TEST_METHODS)
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(RecipeError):
        load_recipe(bad, methods=TEST_METHODS)
    p = tmp_path / "r.yaml"
    p.write_text("merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1, nrmalize: 1}\n")
    with pytest.raises(RecipeError, match=rf"^{p}:4: models\[0\]\.parameters\.nrmalize: .*did you mean 'normalize'"):
        load_recipe(p, methods=TEST_METHODS)


def test_global_param_in_model_entry_warns_and_is_ignored():
    with pytest.warns(RecipeWarning, match=r"r.yaml:4: .*'normalize' is a global parameter"):
        r = load("merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1, normalize: false}\n")
    g, _ = resolve_params(M("linear"), r, None, "w", 0.0)
    assert g == {"normalize": True}


def test_accepted_variants():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = load(
            """
merge_method: linear
base_model: {model: {path: org/base, revision: v1}, lora: null, override_architecture: null}
models:
  - model: org/base@v1
    parameters: {weight: "1e-1"}
  - model: {model: org/other}
    parameters: {weight: [1, "2"]}
parameters:
  normalize: [yes, no]
dtype: torch.bfloat16
tokenizer: {source: base}
"""
        )
    assert r.base_model == "org/base@v1" and r.models[1].model == "org/other"
    assert r.dtype == "bfloat16" and r.tokenizer_source == "base"
    _, per = resolve_params(M("linear"), r, None, "w", 0.5)
    assert per == [{"weight": 0.1}, {"weight": 1.5}]
    assert load(r.to_yaml()) == r
    # LoRA references, both spellings, normalised to mergekit's MODEL+ADAPTER string
    r = load("merge_method: task_arithmetic\nbase_model: {model: a, lora: {path: org/ad, revision: v2}}\n"
             "models: [{model: a+b@v1, parameters: {weight: 1}}]\n")
    assert r.base_model == "a+org/ad@v2" and r.models[0].model == "a+b@v1"
    assert load(r.to_yaml()) == r


def test_programmatic_recipes():
    r = Recipe.from_dict(
        {
            "merge_method": "ties",
            "base_model": "b",
            "models": [{"model": "b"}, {"model": "a", "parameters": {"weight": (0.1, 0.2), "density": Conditional(0.5, "mlp")}}],
            "seed": 3,
        },
        methods=TEST_METHODS,
    )
    assert r.models[1].parameters == {"weight": (0.1, 0.2), "density": (Conditional(0.5, "mlp"),)}
    assert load(r.to_yaml()) == r
    r2 = dataclasses.replace(r, parameters={"lambda": 0.5})
    assert r2.validate(methods=TEST_METHODS) == r2
    bad = dataclasses.replace(r, parameters={"lamda": 0.5})
    with pytest.raises(RecipeError, match="did you mean 'lambda'"):
        bad.validate(methods=TEST_METHODS)
    direct = Recipe("passthrough", slices=(Slice((SliceSource("m", (0, 4)),)), Slice((SliceSource("m", (2, 6), {"scale": 0.5}),))))
    assert direct.validate(methods=TEST_METHODS) == direct
    assert direct.model_refs() == ["m"]
    assert Recipe("linear", models=(ModelEntry("x", {"weight": 1}),)).validate(methods=TEST_METHODS).models[0].model == "x"


# ---------------------------------------------------------------------------------------------
# fuzzing: load_recipe returns a Recipe or raises RecipeError, nothing else

# TSUGIKI_FUZZ_EXAMPLES=5000 for a deeper run
_N = int(os.environ.get("TSUGIKI_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=_N, deadline=None, suppress_health_check=list(HealthCheck))
FUZZ_HEAVY = settings(FUZZ, max_examples=max(1, _N * 2 // 3))  # structured generators are slower

RECIPE_WORDS = [
    "merge_method", "linear", "ties", "slerp", "passthrough", "models", "slices", "sources", "model",
    "layer_range", "parameters", "weight", "density", "t", "filter", "value", "base_model", "dtype",
    "bfloat16", "tokenizer_source", "tokenizer", "union", "base", "seed", "modules", "self_attn", "mlp",
]
YAML_BITS = [": ", ":", "- ", "-", "\n", "\n  ", "\n    ", "[", "]", "{", "}", ", ", "#", "&a ", "*a", "!!str ",
             "!!python/object:os.system ", "!!binary ", "!!set ", "!!omap ", "<<: ", "? ", "|", ">", "'", '"', "%YAML 1.1\n",
             "---\n", "...\n", "0", "1", "-1", "0.5", "1e3", ".nan", ".inf", "null", "~", "yes", "2020-01-01", "a+b", "x@y",
             "\t", "\\", "@", "`", "\x00", "é"]


def _check(text):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecipeWarning)
        try:
            r = load_recipe(text, source_name="fuzz.yaml", methods=TEST_METHODS)
        except RecipeError as e:
            assert str(e).startswith("fuzz.yaml"), str(e)
            return None
        assert isinstance(r, Recipe)
        assert load_recipe(r.to_yaml(), methods=TEST_METHODS) == r
    return r


@FUZZ
@given(st.text(max_size=200))
def test_fuzz_random_text(text):
    _check(text + "\n")  # the newline keeps it from being taken as a file path


@FUZZ
@given(st.lists(st.sampled_from(RECIPE_WORDS + YAML_BITS), max_size=60).map("".join))
def test_fuzz_yamlish(text):
    _check(text + "\n")


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=8),
    st.sampled_from(RECIPE_WORDS),
)
keys = st.one_of(st.sampled_from(RECIPE_WORDS), st.text(max_size=6))
nested = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)), max_leaves=25)


@FUZZ_HEAVY
@given(st.dictionaries(keys, nested, max_size=6))
def test_fuzz_random_documents(doc):
    _check(yaml.safe_dump(doc) + "\n")


# near-valid recipes, then random damage
methods_st = st.sampled_from(["linear", "ties", "dare_ties", "slerp", "passthrough", "model_stock", "della", "choice"])
refs = st.sampled_from(["a", "b", "c", "org/m@rev", "./local/path", "d"])
num = st.one_of(st.integers(-3, 3), st.floats(-2, 2, allow_nan=False))
value_st = st.one_of(num, st.lists(num, max_size=4), st.sampled_from([True, "1e-2", "x"]))
setting_st = st.one_of(
    value_st, st.lists(st.fixed_dictionaries({"value": value_st}, optional={"filter": st.sampled_from(["mlp", "self_attn", "*", None])}), max_size=3)
)
ALL_PARAMS = ["weight", "density", "t", "normalize", "lambda", "epsilon", "scale", "mode", "k", "flag", "int8_mask"]


def _value_for(kind):
    if kind is bool:
        return st.one_of(st.booleans(), st.lists(st.booleans(), max_size=3))
    if kind is int:
        return st.one_of(st.integers(-3, 3), st.lists(st.integers(0, 3), max_size=3))
    if kind is str:
        return st.one_of(st.sampled_from(["x", "y"]), st.lists(st.sampled_from(["x", "y"]), max_size=3))
    return value_st


def _setting_for(kind):
    v = _value_for(kind)
    cond = st.fixed_dictionaries({"value": v}, optional={"filter": st.sampled_from(["mlp", "self_attn", "*", None])})
    return st.one_of(v, st.lists(cond, max_size=3))


@st.composite
def params_for(draw, method, per_model):
    names = [p.name for p in method.params if p.per_model or not per_model]
    if draw(st.integers(0, 19)) == 0:
        names = ALL_PARAMS
    if not names:
        return {}
    out = {}
    if not per_model and any(p.required and p.per_model for p in method.params) and draw(st.booleans()):
        out["weight"] = draw(_setting_for(float))
    for name in draw(st.lists(st.sampled_from(names), max_size=3, unique=True)):
        p = method.param(name)
        out[name] = draw(_setting_for(p.kind if p is not None else float))
    return out


@st.composite
def recipe_dicts(draw):
    m = M(draw(methods_st))
    d = {"merge_method": m.name}
    base = None
    if m.base != "ignored" or draw(st.integers(0, 4)) == 0:
        base = d["base_model"] = draw(refs)
    mp = params_for(m, True)
    if draw(st.booleans()) and m.name != "passthrough":
        models = draw(st.lists(refs, min_size=1, max_size=4, unique=True))
        d["models"] = [{"model": r, "parameters": draw(mp)} for r in models]
    else:
        n = draw(st.integers(1, 4))
        d["slices"] = []
        for _ in range(draw(st.integers(1, 3))):
            start = draw(st.integers(0, 4))
            models = draw(st.lists(refs, min_size=1, max_size=1 if m.name == "passthrough" else 3, unique=True))
            if base is not None and base not in models and draw(st.integers(0, 5)):
                models.insert(draw(st.integers(0, len(models))), base)
            srcs = [{"model": r, "layer_range": [start, start + n], "parameters": draw(mp)} for r in models]
            d["slices"].append({"sources": srcs, "parameters": draw(params_for(m, False))})
    d["parameters"] = draw(params_for(m, False))
    for k, v in (("dtype", st.sampled_from(["bfloat16", "float32"])), ("seed", st.integers(0, 99)), ("name", st.text(max_size=5)),
                 ("tokenizer_source", st.sampled_from(["base", "a"] if base else ["a"])), ("chat_template", st.sampled_from(["chatml", "{{ x }}"]))):
        if draw(st.booleans()):
            d[k] = draw(v)
    return d


def _damage(d, path, new):
    cur = d
    for p in path[:-1]:
        cur = cur[p]
    cur[path[-1]] = new


def _paths(x, path=()):
    yield path
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _paths(v, path + (k,))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _paths(v, path + (i,))


@FUZZ_HEAVY
@given(recipe_dicts(), st.data())
def test_fuzz_near_valid_recipes(d, data):
    r = _check(yaml.safe_dump(d, sort_keys=False) + "\n")
    if r is not None:
        # every valid recipe resolves for any tensor without crashing (RecipeError is fine)
        for i in ([None] if r.slices is None else range(len(r.slices))):
            for name in ("model.layers.0.mlp.up_proj.weight", "model.layers.0.self_attn.q_proj.weight", ""):
                try:
                    resolve_params(M(r.merge_method), r, i, name, data.draw(st.floats(0, 1)))
                except RecipeError:
                    pass
    paths = [p for p in _paths(d) if p]
    path = data.draw(st.sampled_from(paths))
    _damage(d, path, data.draw(nested))
    _check(yaml.safe_dump(d, sort_keys=False) + "\n")


@FUZZ_HEAVY
@given(recipe_dicts())
def test_round_trip_property(d):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecipeWarning)
        try:
            r = Recipe.from_dict(d, methods=TEST_METHODS)
        except RecipeError:
            return
        text = r.to_yaml()
        r2 = load_recipe(text, methods=TEST_METHODS)
    assert r2 == r and r2.to_yaml() == text
    assert not any(isinstance(v, float) and math.isnan(v) for v in r.parameters.values())


def test_yaml_line_break_characters_round_trip():
    # found by hypothesis: NEL (\x85) and LS/PS are read back as line breaks unless double-quoted
    r = load_recipe('merge_method: linear\nmodels:\n  - {model: a, parameters: {weight: 1}}\nname: "x\\N y\\L z\\P"\n',
                    methods=TEST_METHODS)
    assert r.name == "x\x85 y\u2028 z\u2029"
    assert load_recipe(r.to_yaml(), methods=TEST_METHODS) == r


def test_models_besides_the_base_checked_with_the_real_registry():
    """nuslerp interpolates exactly two models, with or without a base; multislerp needs one besides it."""
    two = "merge_method: nuslerp\nmodels:\n  - model: a\n    parameters: {weight: 1}\n  - model: b\n    parameters: {weight: 1}\n"
    load_recipe(two, source_name="r.yaml")
    load_recipe(two + "  - model: c\nbase_model: c\n", source_name="r.yaml")
    for text in (two + "  - model: c\n    parameters: {weight: 1}\n",
                 two + "  - model: c\n    parameters: {weight: 1}\n  - model: d\nbase_model: d\n"):
        with pytest.raises(RecipeError, match=r"^r\.yaml:3: models: merge method 'nuslerp' takes exactly 2 models besides the base, got 3"):
            load_recipe(text, source_name="r.yaml")
    with pytest.raises(RecipeError, match="'multislerp' takes at least 1 models besides the base, got 0"):
        load_recipe("merge_method: multislerp\nbase_model: a\nmodels:\n  - model: a\n", source_name="r.yaml")
