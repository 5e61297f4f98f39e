"""Full recipes on tiny real checkpoints, checked against a second, plain computation of the same merge."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tsugiki.factory import TinyLMSpec, build_tiny_lm
from tsugiki.merging.execute import MergeOptions
from tsugiki.merging.inmemory import InMemoryMerger
from tsugiki.merging.recipe import load_recipe
from tsugiki.merging.to_disk import merge_to_disk

from helpers import weights

QUIET = MergeOptions(progress=False)


def merged_state(out):
    model = AutoModelForCausalLM.from_pretrained(out)
    return {k: v.detach() for k, v in model.state_dict().items()}


def layer_index(name):
    parts = name.split(".")
    return int(parts[2]) if name.startswith("model.layers.") else None


def test_linear_recipe_equals_weighted_sum(tiny_siblings, tmp_path):
    a, b, c = tiny_siblings.variants
    recipe = load_recipe(f"""
merge_method: linear
models:
  - {{model: {a}, parameters: {{weight: 0.2}}}}
  - {{model: {b}, parameters: {{weight: 0.3}}}}
  - {{model: {c}, parameters: {{weight: 0.5}}}}
""")
    merge_to_disk(recipe, tmp_path / "out", QUIET)
    got = merged_state(tmp_path / "out")
    wa, wb, wc = weights(a), weights(b), weights(c)
    assert set(wa) <= set(got)
    for name in wa:
        expected = (0.2 * wa[name] + 0.3 * wb[name] + 0.5 * wc[name]) / 1.0
        torch.testing.assert_close(got[name], expected, atol=1e-6, rtol=0)


def reference_ties(base, xs, ws, densities):
    """TIES (Yadav et al. 2023) written out plainly: trim to top-k magnitude, elect sign by weighted sum,
    average the agreeing weighted deltas (normalized by the agreeing weights)."""
    deltas = []
    for x, density in zip(xs, densities):
        d = (x - base).flatten()
        k = int(density * d.numel())
        keep = torch.zeros_like(d)
        keep[torch.topk(d.abs(), k).indices] = 1
        deltas.append(d * keep)
    weighted = [w * d for w, d in zip(ws, deltas)]
    total = sum(weighted)
    elected = torch.where(total >= 0, 1.0, -1.0)
    num = torch.zeros_like(total)
    den = torch.zeros_like(total)
    for w, wd in zip(ws, weighted):
        agree = (torch.sign(wd) == elected).float()
        num += wd * agree
        den += w * agree
    den[den == 0] = 1
    return base + (num / den).reshape(base.shape)


def test_ties_with_gradient_and_filter_equals_reference(tiny_siblings, tmp_path):
    base, (a, b, _) = tiny_siblings.base, tiny_siblings.variants
    recipe = load_recipe(f"""
merge_method: ties
base_model: {base}
models:
  - model: {base}
  - model: {a}
    parameters:
      weight: [{{filter: self_attn, value: [1.0, 0.25]}}, {{value: 0.7}}]
      density: 0.5
  - model: {b}
    parameters: {{weight: 0.4, density: 0.3}}
dtype: float32
""")
    merge_to_disk(recipe, tmp_path / "out", QUIET)
    got = weights(tmp_path / "out")
    wbase, wa, wb = weights(base), weights(a), weights(b)
    n_layers = json.loads((base / "config.json").read_text())["num_hidden_layers"]
    for name in wbase:
        li = layer_index(name)
        t = li / (n_layers - 1) if li is not None else 0.0
        weight_a = (1.0 * (1 - t) + 0.25 * t) if "self_attn" in name else 0.7
        expected = reference_ties(wbase[name], [wa[name], wb[name]], [weight_a, 0.4], [0.5, 0.3])
        torch.testing.assert_close(got[name], expected, atol=1e-6, rtol=0, msg=name)


def test_passthrough_slices_stack_layers(tiny_siblings, tmp_path):
    base, (a, *_) = tiny_siblings.base, tiny_siblings.variants
    recipe = load_recipe(f"""
merge_method: passthrough
slices:
  - sources: [{{model: {base}, layer_range: [0, 3]}}]
  - sources: [{{model: {a}, layer_range: [1, 4]}}]
""")
    merge_to_disk(recipe, tmp_path / "out", QUIET)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 6
    got, wbase, wa = weights(tmp_path / "out"), weights(base), weights(a)
    origin = [(wbase, 0), (wbase, 1), (wbase, 2), (wa, 1), (wa, 2), (wa, 3)]
    for name, tensor in got.items():
        li = layer_index(name)
        if li is None:
            src = wbase if "embed" in name else wa  # pre-weights from the first slice, post from the last
            assert torch.equal(tensor, src[name]), name
        else:
            src, src_layer = origin[li]
            assert torch.equal(tensor, src[name.replace(f"layers.{li}.", f"layers.{src_layer}.", 1)]), name
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    ids = tok("こんにちは", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == ids.shape[1] + 4


DARE = """
merge_method: dare_ties
base_model: {base}
models:
  - {{model: {a}, parameters: {{weight: 0.5, density: 0.4}}}}
  - {{model: {b}, parameters: {{weight: 0.5, density: 0.6}}}}
seed: {seed}
"""


def test_dare_seeded_disk_and_memory_agree(tiny_siblings, tmp_path):
    base, (a, b, _) = tiny_siblings.base, tiny_siblings.variants
    for tag, seed in (("s1", 1), ("s1b", 1), ("s2", 2)):
        merge_to_disk(load_recipe(DARE.format(base=base, a=a, b=b, seed=seed)), tmp_path / tag, QUIET)
    s1, s1b, s2 = (weights(tmp_path / t) for t in ("s1", "s1b", "s2"))
    assert all(torch.equal(s1[n], s1b[n]) for n in s1)
    assert any(not torch.equal(s1[n], s2[n]) for n in s1)

    model = AutoModelForCausalLM.from_pretrained(base)
    merger = InMemoryMerger(model, {str(p): p for p in (base, a, b)})
    storage = {n: p.data_ptr() for n, p in model.named_parameters()}
    merger.apply(load_recipe(DARE.format(base=base, a=a, b=b, seed=1)))
    state = model.state_dict()
    for n in s1:
        assert torch.equal(state[n], s1[n]), n
    assert storage == {n: p.data_ptr() for n, p in model.named_parameters()}  # written in place
    merger.apply(load_recipe(DARE.format(base=base, a=a, b=b, seed=2)))
    assert all(torch.equal(model.state_dict()[n], s2[n]) for n in s2)


def test_output_dir_contents_and_dtype(tiny_mistral_siblings, tmp_path):
    base, (a, b) = tiny_mistral_siblings.base, tiny_mistral_siblings.variants
    recipe = load_recipe(f"""
merge_method: task_arithmetic
base_model: {base}
models:
  - {{model: {a}, parameters: {{weight: 1.0}}}}
  - {{model: {b}, parameters: {{weight: 1.0}}}}
dtype: bfloat16
""")
    out = tmp_path / "out"
    merge_to_disk(recipe, out, MergeOptions(progress=False, max_shard_bytes=60_000))
    assert (out / "model.safetensors.index.json").exists()
    for name in ("config.json", "tokenizer.json", "generation_config.json", "tsugiki_recipe.yaml", "README.md"):
        assert (out / name).exists(), name
    assert load_recipe(out / "tsugiki_recipe.yaml") == recipe
    got = weights(out)
    assert all(t.dtype == torch.bfloat16 for t in got.values())
    wbase, wa, wb = weights(base), weights(a), weights(b)
    for n in wbase:  # computed in fp32, rounded once to bf16: at most one bf16 step from this fp32 sum,
        # whose last fp32 bit depends on the order the CPU's vectorised kernels add in
        exact = wbase[n] + (wa[n] - wbase[n]) + (wb[n] - wbase[n])
        step = exact.abs() * 2.0 ** -7 + 1e-30
        assert ((got[n].float() - exact).abs() <= step).all(), n
        assert (got[n] == exact.to(torch.bfloat16)).float().mean() > 0.99, n  # almost all bit for bit
    assert json.loads((out / "config.json").read_text()).get("dtype") == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == "mistral"


def test_sharded_input(tiny_sharded_lm, tmp_path):
    recipe = load_recipe(f"""
merge_method: linear
models:
  - {{model: {tiny_sharded_lm}, parameters: {{weight: 2.0}}}}
parameters: {{normalize: true}}
""")
    merge_to_disk(recipe, tmp_path / "out", QUIET)
    src, got = weights(tiny_sharded_lm), weights(tmp_path / "out")
    assert len(list(tiny_sharded_lm.glob("*.safetensors"))) >= 3
    assert set(src) == set(got) and all(torch.equal(src[n], got[n]) for n in src)


def test_tied_embeddings_model(tmp_path):
    a = build_tiny_lm(tmp_path / "a", TinyLMSpec(tie_word_embeddings=True, seed=1))
    b = build_tiny_lm(tmp_path / "b", TinyLMSpec(tie_word_embeddings=True, seed=2))
    recipe = load_recipe(f"merge_method: slerp\nbase_model: {a}\nmodels: [{{model: {a}}}, {{model: {b}}}]\nparameters: {{t: 0.3}}\n")
    merge_to_disk(recipe, tmp_path / "out", QUIET)
    assert "lm_head.weight" not in weights(tmp_path / "out")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_unknown_architecture_is_inferred_and_merged(tiny_siblings, tmp_path, caplog):
    from helpers import copy_model

    def rename(t):
        return {k.replace("model.", "transformer.", 1): v for k, v in t.items()}

    a = copy_model(tiny_siblings.variants[0], tmp_path / "a", rename)
    b = copy_model(tiny_siblings.variants[1], tmp_path / "b", rename)
    for d in (a, b):  # an architecture class tsugiki has no spec for
        cfg = json.loads((d / "config.json").read_text())
        cfg["architectures"] = ["MysteryForCausalLM"]
        (d / "config.json").write_text(json.dumps(cfg))
    recipe = load_recipe(f"""
merge_method: linear
models:
  - {{model: {a}, parameters: {{weight: [1.0, 0.0]}}}}
  - {{model: {b}, parameters: {{weight: [0.0, 1.0]}}}}
""")
    with caplog.at_level("WARNING"):
        merge_to_disk(recipe, tmp_path / "out", QUIET)
    assert "inferred from key patterns" in caplog.text
    got, wa, wb = weights(tmp_path / "out"), weights(a), weights(b)
    # the weight gradient runs over the inferred layers: layer 0 is all a, layer 3 all b
    for name in got:
        if ".layers.0." in name:
            assert torch.allclose(got[name], wa[name], atol=1e-7)
        if ".layers.3." in name:
            assert torch.allclose(got[name], wb[name], atol=1e-7)


def test_tokenizer_source_and_chat_template(tiny_siblings, tmp_path):
    from helpers import copy_model

    base, (a, *_) = tiny_siblings.base, tiny_siblings.variants
    donor = copy_model(a, tmp_path / "donor", lambda t: t)
    cfg = json.loads((donor / "tokenizer_config.json").read_text())
    cfg["model_max_length"] = 77  # a mark that only the donor's tokenizer carries
    (donor / "tokenizer_config.json").write_text(json.dumps(cfg))
    recipe = load_recipe(f"""
merge_method: linear
base_model: {base}
models:
  - {{model: {base}, parameters: {{weight: 0.5}}}}
  - {{model: {donor}, parameters: {{weight: 0.5}}}}
tokenizer_source: {donor}
chat_template: "{{% for m in messages %}}{{{{ m['content'] }}}}{{% endfor %}}"
""")
    merge_to_disk(recipe, tmp_path / "out", QUIET)
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert tok.model_max_length == 77
    assert tok.apply_chat_template([{"role": "user", "content": "やあ"}], tokenize=False) == "やあ"


def test_in_memory_checks_sources_once(tiny_siblings, caplog):
    from tsugiki.errors import MergeError
    from tsugiki.merging.checkpoint import Checkpoint, StateDictSource

    base, a = tiny_siblings.base, tiny_siblings.variants[0]
    with Checkpoint(a) as ck:
        poisoned = {n: ck.read(n).clone() for n in ck.names()}
        config = ck.config()
    poisoned["model.norm.weight"][0] = float("inf")
    model = AutoModelForCausalLM.from_pretrained(base)
    with caplog.at_level("WARNING"):
        merger = InMemoryMerger(model, {"base": base, "a": StateDictSource(poisoned, label="a", config=config)})
    assert caplog.text.count("contains NaN/Inf") == 1 and "model.norm.weight" in caplog.text
    caplog.clear()
    recipe = load_recipe("merge_method: linear\nmodels:\n  - {model: base, parameters: {weight: 0.5}}\n"
                         "  - {model: a, parameters: {weight: 0.5}}\n")
    with caplog.at_level("WARNING"), pytest.raises(MergeError, match="model.norm.weight: merged tensor contains NaN/Inf"):
        merger.apply(recipe)
    assert "contains NaN/Inf" not in caplog.text.replace("merged tensor contains NaN/Inf", "")
