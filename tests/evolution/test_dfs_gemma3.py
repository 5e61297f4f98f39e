"""DFS over Gemma 3: path layers keep their own attention kind (sliding window or full, each with its
own rotary base) at any path position, in the in-memory shell and in the exported checkpoint, and
scales fold into the post-branch norms (``w' = (1 + w) / P - 1``), not into o_proj/down_proj."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import weights
from transformers import AutoModelForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig

from tsugiki.errors import EvolutionError
from tsugiki.evolution import from_data, make_problem
from tsugiki.evolution.kinds.dfs.assemble import assemble, check_compatible
from tsugiki.evolution.kinds.dfs.space import RESIDUAL_FOLD, DFSPath, fold_for
from tsugiki.evolution.sources import load_causal_lm
from tsugiki.merging.execute import MergeOptions
from tsugiki.merging.recipe import load_recipe
from tsugiki.merging.to_disk import merge_to_disk

S, F = "sliding_attention", "full_attention"
WINDOW = 4  # < the 12 tokens below, so sliding and full attention differ
THETA = {S: 10.0, F: 10000.0}  # far apart, so a layer given the other kind's rotary embedding is visibly off
TYPES = {"a": [S, S, F, S, F], "b": [S, S, S, S]}  # b has no full layer: its own rotary module lacks that kind
IDS = torch.tensor([[2, 17, 101, 33, 250, 9, 64, 64, 5, 188, 41, 77]])

# b is the host (embeddings); (a, 2) is full at a position where b and a are sliding, (a, 0) sliding
# where a is full; the scales only matter for the scaled cases
PATH = (("b", 0), ("a", 2), ("a", 0), ("b", 3), ("a", 4), ("a", 1))
SCALES = (1.0, 0.8, 1.25, 1.0, 0.7, 1.3)


def _tiny_gemma3(types: list[str], seed: int) -> Gemma3ForCausalLM:
    cfg = Gemma3TextConfig(
        vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=len(types), num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, sliding_window=WINDOW, layer_types=types,
        rope_parameters={t: {"rope_type": "default", "rope_theta": THETA[t]} for t in (S, F)},
        max_position_embeddings=64, pad_token_id=0, bos_token_id=2, eos_token_id=1, tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(cfg)
    with torch.no_grad():  # Gemma initializes its norm weights to 0 (gain 1); make the gains matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.3)
    return model


@pytest.fixture(scope="module")
def gemma_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gemma3_pair")
    dirs = {}
    for seed, (name, types) in enumerate(TYPES.items()):
        dirs[name] = root / name
        _tiny_gemma3(types, seed).save_pretrained(dirs[name])
    return dirs


@pytest.fixture(scope="module")
def models(gemma_dirs):
    return {name: load_causal_lm(str(d))[0] for name, d in gemma_dirs.items()}


def _other(kind: str) -> str:
    return F if kind == S else S


def _rotary(kind: str, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    d = 16
    inv = 1.0 / THETA[kind] ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    ang = torch.arange(T, dtype=torch.float32)[:, None] * inv[None]
    emb = torch.cat([ang, ang], -1)[None]
    return emb.cos(), emb.sin()


def _mask(kind: str, T: int) -> torch.Tensor:
    i, j = torch.arange(T)[:, None], torch.arange(T)[None]
    allowed = (j <= i) & ((i - j < WINDOW) if kind == S else True)
    return torch.zeros(T, T).masked_fill(~allowed, float("-inf"))[None, None]


@torch.no_grad()
def reference(models, path, scales, ids, *, swap_mask=False, swap_rope=False) -> torch.Tensor:
    """Logits computed layer by layer: each source layer called with the mask and rotary embedding of
    its own kind in its own model (or of the other kind, for the controls)."""
    first, last = models[path[0][0]], models[path[-1][0]]
    T = ids.shape[1]
    h = first.model.embed_tokens(ids)
    for (name, k), s in zip(path, scales):
        kind = models[name].config.layer_types[k]
        mask = _mask(_other(kind) if swap_mask else kind, T)
        rope = _rotary(_other(kind) if swap_rope else kind, T)
        h = models[name].model.layers[k](h * s, position_embeddings=rope, attention_mask=mask,
                                         position_ids=torch.arange(T)[None])
    return first.lm_head(last.model.norm(h))


@pytest.mark.parametrize("scales", [(1.0,) * len(PATH), SCALES], ids=["unscaled", "scaled"])
def test_shell_layers_keep_their_own_mask_and_rotary(models, scales):
    shell = assemble(models, DFSPath(PATH, scales))
    assert shell.config.layer_types == [TYPES[m][k] for m, k in PATH]
    with torch.no_grad():
        got = shell(IDS).logits
    torch.testing.assert_close(got, reference(models, PATH, scales, IDS), rtol=1e-5, atol=1e-5)
    # the controls: the same layers with the other kind's mask, or rotary, give other logits
    for swap in ({"swap_mask": True}, {"swap_rope": True}):
        assert (got - reference(models, PATH, scales, IDS, **swap)).abs().max() > 1e-2, swap
    # generation with a cache (sliding layers keep a window) continues as a full forward does
    out = shell.generate(IDS, max_new_tokens=4, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        greedy = shell(out).logits[0, IDS.shape[1] - 1:-1].argmax(-1)
    assert torch.equal(greedy, out[0, IDS.shape[1]:])
    assert [m.config.layer_types for m in models.values()] == list(TYPES.values())  # sources untouched


def _problem(gemma_dirs, tmp_path):
    cfg = {"sources": {n: str(d) for n, d in gemma_dirs.items()},
           "space": {"kind": "dfs", "models": ["b", "a"], "repeats": 1},
           "fitness": {"function": "answer_loglik", "data": {"generator": ["arithmetic"], "split": "fitness", "n": 4}},
           "search": {"generations": 1}}
    return make_problem(from_data(cfg), tmp_path)


def _values(problem, scales: dict[str, float]) -> dict[str, float]:
    """Values decoding to the path (b 0, a 2, a 4): a sliding layer, then two full ones."""
    values = {n: -1.0 for n in problem.space.names if n.startswith("use.")}
    slots = problem.dfs.slots()
    for m, k in (("b", 0), ("a", 2), ("a", 4)):
        values[f"use.{slots.index((m, k))}.{m}.L{k}"] = 1.0
    for a in ("a", "b"):
        for b in ("a", "b"):
            values[f"scale.{a}.{b}"] = scales.get(b, 1.0)
    return values


@pytest.mark.parametrize("scaled", [False, True])
def test_export_keeps_layer_types_and_equals_the_shell(gemma_dirs, models, tmp_path, scaled):
    problem = _problem(gemma_dirs, tmp_path / "run")
    assert problem.dfs.fold.gain_offset == 1.0  # chosen from model_type gemma3_text
    values = _values(problem, {"a": 0.8, "b": 1.25} if scaled else {})
    path = problem.dfs.path(values)
    assert path.layers == (("b", 0), ("a", 2), ("a", 4)) and path.layers[-1][0] == "a"
    shell = assemble(models, path)
    out = problem.export(values, tmp_path / "best")
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    assert exported.config.layer_types == [S, F, F]  # b's sliding layer 0, then a's full layers 2 and 4
    with torch.no_grad():
        a, b = shell(IDS).logits, exported(IDS).logits
    if not scaled:
        assert torch.equal(b, a)
        return
    # scales folded into the post-branch norms: equal up to the RMSNorm epsilon
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        unscaled = assemble(models, DFSPath(path.layers, (1.0,) * 3))(IDS).logits
    assert (a - unscaled).abs().max() > 1e-1  # the scales change the candidate: the fold did something
    src, got = weights(gemma_dirs["a"]), weights(out)
    p = path.cumulative()[1]
    for branch in ("post_attention_layernorm", "post_feedforward_layernorm"):
        w = src[f"model.layers.2.{branch}.weight"]
        torch.testing.assert_close(got[f"model.layers.1.{branch}.weight"], (1 + w) / p - 1, rtol=0, atol=1e-6)
    # the recipe written to best.yaml merges to the same checkpoint
    again = merge_to_disk(load_recipe(problem.document(values)), tmp_path / "again", MergeOptions(progress=False)).out
    assert all(torch.equal(t, got[n]) for n, t in weights(again).items())
    # the Llama fold (o_proj / down_proj) is undone by the post-branch norms: that export is wrong
    wrong = merge_to_disk(dataclasses.replace(problem.dfs, fold=RESIDUAL_FOLD).recipe(path),
                          tmp_path / "wrong", MergeOptions(progress=False)).out
    with torch.no_grad():
        off = AutoModelForCausalLM.from_pretrained(wrong).eval()(IDS).logits
    assert (off - a).abs().max() > 1e-1


def test_fold_choice_and_refusals(models):
    names = [f"model.layers.0.{s}.weight" for s in ("self_attn.o_proj", "mlp.down_proj", "post_feedforward_layernorm")]
    assert fold_for({"model_type": "gemma3_text"}, names + ["model.layers.0.post_attention_layernorm.weight"], "g").gain_offset == 1.0
    assert fold_for({"model_type": "llama"}, names[:2], "l") == RESIDUAL_FOLD
    with pytest.raises(EvolutionError, match="gemma2 normalizes each branch output"):
        fold_for({"model_type": "gemma2"}, names, "g2")
    with pytest.raises(EvolutionError, match="no post_attention_layernorm"):
        fold_for({"model_type": "gemma3_text"}, names, "g3")
    other = load_causal_lm(str(models["a"].name_or_path))[0]
    other.config.sliding_window = 8
    with pytest.raises(EvolutionError, match="differ in config sliding_window"):
        check_compatible({"b": models["b"], "a": other})


def test_passthrough_offset_scales_a_one_plus_w_gain():
    from tsugiki.merging.methods import MergeInputs, get_method

    w = torch.tensor([0.5, -0.25, 0.0])
    got = get_method("passthrough")(MergeInputs([w], None, [{"scale": 0.8, "offset": 0.8 - 1}]))
    torch.testing.assert_close(1 + got, (1 + w) * 0.8)
