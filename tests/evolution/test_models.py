"""PS and DFS candidates on tiny real checkpoints equal explicit reference computations; exports load."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import weights
from transformers import AutoModelForCausalLM

from tsugiki.evolution import evolve, from_data, make_problem
from tsugiki.evolution.kinds.dfs.assemble import assemble
from tsugiki.evolution.kinds.dfs.space import DFSPath
from tsugiki.evolution.sources import load_causal_lm

IDS = torch.tensor([[1, 7, 76, 8, 84, 11, 40, 41]])


def _sources(sib) -> dict:
    return {"base": str(sib.base), **{f"variant_{i}": str(v) for i, v in enumerate(sib.variants)}}


def _data() -> dict:
    return {"generator": ["arithmetic", "ja_sentences"], "split": "fitness", "n": 8}


def ps_config(sib, method="task_arithmetic", params=None, **space) -> dict:
    return {"sources": _sources(sib),
            "space": {"kind": "ps", "method": method, "base_model": "base", "models": ["variant_0", "variant_1"],
                      "params": params or {"weight": [0, 1]}, **space},
            "fitness": {"function": "answer_loglik", "data": _data()},
            "validation": {"data": {**_data(), "split": "validation"}},
            "search": {"seed": 0, "population": 4, "generations": 2}}


def test_ps_candidate_equals_hand_computed_task_arithmetic(tiny_siblings, tmp_path):
    problem = make_problem(from_data(ps_config(tiny_siblings, layer_groups=2)), tmp_path)
    values = {"variant_0.weight.g0": 0.2, "variant_0.weight.g1": 0.9, "variant_0.weight.rest": 0.5,
              "variant_1.weight.g0": 0.7, "variant_1.weight.g1": 0.1, "variant_1.weight.rest": 0.3}
    problem.evaluate(values)  # loads the base and merges the candidate into it
    base, v0, v1 = (weights(p) for p in tiny_siblings.all[:3])
    merged = problem.model.state_dict()
    for name, b in base.items():
        layer = int(name.split(".")[2]) if name.startswith("model.layers.") else None
        group = "rest" if layer is None else f"g{layer * 2 // 4}"
        w0, w1 = values[f"variant_0.weight.{group}"], values[f"variant_1.weight.{group}"]
        expected = b + w0 * (v0[name] - b) + w1 * (v1[name] - b)
        torch.testing.assert_close(merged[name], expected, rtol=1e-6, atol=1e-6, msg=name)


def test_ps_dare_ties_candidate_equals_exported_merge(tiny_siblings, tmp_path):
    cfg = ps_config(tiny_siblings, "dare_ties", {"weight": [0, 1], "density": [0.1, 1]})
    problem = make_problem(from_data(cfg), tmp_path)
    values = {"variant_0.weight": 0.6, "variant_0.density": 0.5, "variant_1.weight": 0.4, "variant_1.density": 0.8}
    fit = problem.evaluate(values)
    out = problem.export(values, tmp_path / "best")
    on_disk = weights(out)
    for name, t in problem.model.state_dict().items():
        assert torch.equal(t, on_disk[name]), name
    reloaded, _ = load_causal_lm(str(out))
    with torch.no_grad():
        assert torch.equal(reloaded(IDS).logits, problem.model(IDS).logits)
    assert problem.evaluate(values) == fit  # re-merging the same candidate is deterministic


@pytest.mark.parametrize("method, params, values", [
    ("nearswap", {"t": [0.0, 0.05]}, {"t": 0.01}),
    ("sce", {"select_topk": [0.1, 1.0]}, {"select_topk": 0.4}),
    ("ramplus_tl", {"r": [0.0, 1.0], "epsilon": [0.0, 0.01]}, {"r": 0.6, "epsilon": 0.002}),
    ("nuslerp", {"weight": [0.0, 1.0]}, {"variant_0.weight": 0.3, "variant_1.weight": 0.8}),
])
def test_ps_over_newer_methods_candidate_equals_exported_merge(method, params, values, tiny_siblings, tmp_path):
    """space.method can be any method with real-valued parameters, per model or method-level: the candidate
    merged in memory equals the exported best merged on disk, and best.yaml carries the searched values."""
    cfg = ps_config(tiny_siblings, method, params)
    if method == "nearswap":
        cfg["space"]["models"] = ["variant_0"]
    problem = make_problem(from_data(cfg), tmp_path)
    assert sorted(problem.space.names) == sorted(values)
    problem.evaluate(values)
    out = problem.export(values, tmp_path / "best")
    on_disk = weights(out)
    base = weights(tiny_siblings.base)
    assert any(not torch.equal(on_disk[k], base[k]) for k in base)
    for name, t in problem.model.state_dict().items():
        assert torch.equal(t, on_disk[name]), name


# ---- DFS: a hand-written Llama forward ---------------------------------------------------------
def _rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rope(x, theta):
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    ang = torch.arange(x.shape[-2], dtype=torch.float32)[:, None] * inv[None]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    rot = torch.cat([-x[..., d // 2:], x[..., :d // 2]], -1)
    return x * cos + rot * sin


def reference_forward(tensors: dict[str, dict], cfg: dict, ids, path, scales, first, last):
    """Logits of the path model, from raw safetensors tensors: embeddings of `first`, the listed layers
    with their input scales, final norm and head of `last`."""
    nh, nkv, hd, eps = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"], cfg["rms_norm_eps"]
    theta = cfg["rope_parameters"]["rope_theta"]
    h = tensors[first]["model.embed_tokens.weight"][ids[0]]
    T = h.shape[0]
    causal = torch.full((T, T), float("-inf")).triu(1)
    for (model, layer), s in zip(path, scales):
        W = {k.split(f"model.layers.{layer}.", 1)[1]: v for k, v in tensors[model].items() if k.startswith(f"model.layers.{layer}.")}
        h = h * s
        a = _rms(h, W["input_layernorm.weight"], eps)
        q = (a @ W["self_attn.q_proj.weight"].T).view(T, nh, hd).transpose(0, 1)
        k = (a @ W["self_attn.k_proj.weight"].T).view(T, nkv, hd).transpose(0, 1).repeat_interleave(nh // nkv, 0)
        v = (a @ W["self_attn.v_proj.weight"].T).view(T, nkv, hd).transpose(0, 1).repeat_interleave(nh // nkv, 0)
        att = torch.softmax(_rope(q, theta) @ _rope(k, theta).transpose(-1, -2) / hd**0.5 + causal, -1) @ v
        h = h + att.transpose(0, 1).reshape(T, nh * hd) @ W["self_attn.o_proj.weight"].T
        m = _rms(h, W["post_attention_layernorm.weight"], eps)
        h = h + (F.silu(m @ W["mlp.gate_proj.weight"].T) * (m @ W["mlp.up_proj.weight"].T)) @ W["mlp.down_proj.weight"].T
    return _rms(h, tensors[last]["model.norm.weight"], eps) @ tensors[last]["lm_head.weight"].T


PATH = (("variant_0", 0), ("base", 2), ("variant_1", 1), ("base", 2), ("variant_0", 3), ("variant_1", 3))
SCALES = (1.0, 0.7, 1.3, 0.9, 1.0, 1.2)


@pytest.fixture(scope="module")
def loaded(tiny_siblings):
    names = ("base", "variant_0", "variant_1")
    models = {n: load_causal_lm(str(p))[0] for n, p in zip(names, tiny_siblings.all)}
    return models, {n: weights(p) for n, p in zip(names, tiny_siblings.all)}


def test_dfs_candidate_equals_hand_written_forward_and_shares_weights(loaded, tiny_siblings):
    models, tensors = loaded
    cand = assemble(models, DFSPath(PATH, SCALES))
    cfg = json.loads((tiny_siblings.base / "config.json").read_text())
    with torch.no_grad():
        got = cand(IDS).logits[0]
    want = reference_forward(tensors, cfg, IDS, PATH, SCALES, "variant_0", "variant_1")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    source_ptrs = {p.data_ptr() for m in models.values() for p in m.parameters()}
    assert {p.data_ptr() for p in cand.parameters()} <= source_ptrs  # no weight was copied
    assert [m.config.num_hidden_layers for m in models.values()] == [4, 4, 4]  # sources untouched


def test_dfs_generate_uses_one_cache_entry_per_path_position(loaded):
    models, _ = loaded
    cand = assemble(models, DFSPath(PATH, SCALES))
    out = cand.generate(IDS, max_new_tokens=6, do_sample=False, pad_token_id=3)
    with torch.no_grad():
        greedy = cand(out).logits[0, IDS.shape[1] - 1:-1].argmax(-1)  # no cache: one full forward
    assert torch.equal(greedy, out[0, IDS.shape[1]:])


@pytest.mark.parametrize("scaled", [False, True])
def test_dfs_export_loads_and_matches_candidate(tiny_siblings, tmp_path, scaled):
    cfg = {"sources": _sources(tiny_siblings),
           "space": {"kind": "dfs", "models": ["variant_0", "variant_1"], "repeats": 2},
           "fitness": {"function": "answer_loglik", "data": _data()},
           "search": {"generations": 1}}
    problem = make_problem(from_data(cfg), tmp_path)
    values = {n: -1.0 for n in problem.space.names if n.startswith("use.")}
    values.update({"use.1.variant_0.L1": 1, "use.5.variant_1.L1": 1, "use.6.variant_1.L2": 1, "use.8.variant_0.L0": 1,
                   "use.15.variant_1.L3": 1})
    for a in ("variant_0", "variant_1"):
        for b in ("variant_0", "variant_1"):
            values[f"scale.{a}.{b}"] = 1.0 if not scaled else {"variant_0": 0.8, "variant_1": 1.25}[b]
    problem.evaluate(values)
    cand = assemble(problem.models, problem.dfs.path(values))
    out = problem.export(values, tmp_path / "dfs")
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    assert exported.config.num_hidden_layers == 5
    with torch.no_grad():
        a, b = cand(IDS).logits, exported(IDS).logits
    if scaled:  # folded scales: equal up to the RMSNorm epsilon (measured ~2e-6 on logits of ~3)
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    else:  # every cumulative scale is 1: the stacked checkpoint computes exactly the candidate
        assert torch.equal(b, a)
    assert exported.generate(IDS, max_new_tokens=3, do_sample=False, pad_token_id=3).shape[1] == IDS.shape[1] + 3


def test_ps_run_end_to_end(tiny_siblings, tmp_path):
    cfg = ps_config(tiny_siblings, "dare_ties", {"weight": [0, 1], "density": [0.1, 1]})
    result = evolve(from_data(cfg), tmp_path / "run")
    assert result.evaluations == 8 and result.failures == 0
    gens = [json.loads(line) for line in (tmp_path / "run" / "generations.jsonl").read_text().splitlines()]
    assert all(g["validation"] is not None for g in gens)
    assert (tmp_path / "run" / "plots" / "ps_heatmap.png").exists()
    text = (tmp_path / "run" / "best.yaml").read_text()
    assert "merge_method: dare_ties" in text and f"base_model: {tiny_siblings.base}" in text


def test_unmergeable_sources_fail_before_any_candidate(tiny_siblings, tiny_mismatched_lm, tmp_path):
    from tsugiki.errors import EvolutionError, MergeError

    cfg = ps_config(tiny_siblings)
    cfg["sources"]["variant_1"] = str(tiny_mismatched_lm)
    with pytest.raises(MergeError, match="shape"):
        evolve(from_data(cfg), tmp_path / "ps")
    assert not (tmp_path / "ps" / "history.jsonl").exists()
    cfg = {"sources": cfg["sources"], "space": {"kind": "dfs", "models": ["variant_0", "variant_1"]},
           "fitness": {"function": "answer_loglik", "data": _data()}, "search": {"generations": 1}}
    with pytest.raises(EvolutionError, match="cannot share a path"):
        evolve(from_data(cfg), tmp_path / "dfs")


def test_problem_that_cannot_load_stops_the_run(tiny_siblings, tmp_path):
    import shutil

    from tsugiki.errors import EvolutionError

    broken = tmp_path / "broken"
    shutil.copytree(tiny_siblings.base, broken)
    cfg = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps(cfg | {"model_type": "no_such_model"}))
    run = {"sources": {"m": str(broken)}, "space": {"kind": "dfs", "models": ["m"]},
           "fitness": {"function": "answer_loglik", "data": _data()}, "search": {"generations": 3}}
    with pytest.raises(EvolutionError, match="cannot set up the dfs problem"):
        evolve(from_data(run), tmp_path / "run")
